// The operator view: organizations, projects, keys, plans and provider credentials through the
// /admin/v1 API, whose bodies are the protos' messages as JSON.

import { admin } from "./api.js";
import {
  $,
  confirmButton,
  fillTable,
  fmtInt,
  fmtTime,
  h,
  intField,
  latestOnly,
  listField,
  replace,
  showAlert,
  textField,
} from "./dom.js";

const SECTIONS = ["orgs", "keys", "projects", "providers", "plans"];
const els = {};
const state = { orgs: [], plans: [], projects: [], section: "orgs", useKey: () => {} };

const limit = (n) => (Number(n) ? fmtInt(n) : "—");

function budget(quota) {
  if (!quota || !Number(quota.budget_tokens)) return "—";
  const period = quota.budget_period && quota.budget_period !== "none" ? ` / ${quota.budget_period}` : "";
  return `${fmtInt(quota.budget_tokens)}${period}`;
}

function limits(quota) {
  const q = quota ?? {};
  const parts = [];
  if (Number(q.rpm)) parts.push(`${fmtInt(q.rpm)} rpm`);
  if (Number(q.tpm)) parts.push(`${fmtInt(q.tpm)} tpm`);
  if (Number(q.max_concurrent)) parts.push(`${fmtInt(q.max_concurrent)} concurrent`);
  return parts.length ? parts.join(", ") : "—";
}

/** The Quota message from a form's rpm, tpm, max_concurrent, budget_tokens, budget_period. */
function quotaOf(form) {
  return {
    rpm: intField(form, "rpm"),
    tpm: intField(form, "tpm"),
    max_concurrent: intField(form, "max_concurrent"),
    budget_tokens: intField(form, "budget_tokens"),
    budget_period: textField(form, "budget_period"),
  };
}

function notice(message) {
  showAlert(els.error, "");
  showAlert(els.notice, message);
}

/** Runs an API call; its failure is shown as the API's own message. */
async function attempt(action) {
  showAlert(els.error, "");
  showAlert(els.notice, "");
  try {
    return await action();
  } catch (err) {
    showAlert(els.error, err.message);
    return undefined;
  }
}

function org() {
  return state.orgs.find((o) => o.name === els.org.value);
}

// Sections -----------------------------------------------------------------------------------

function showSection(name) {
  state.section = name;
  for (const section of SECTIONS) $(`op-${section}`).hidden = section !== name;
  for (const button of els.subtabs) {
    button.setAttribute("aria-pressed", String(button.dataset.section === name));
  }
  return renderSection();
}

function renderSection() {
  const load = { orgs: renderOrgs, keys: loadKeys, projects: loadProjects, providers: loadProviders, plans: renderPlans };
  return attempt(load[state.section]);
}

function planOptions() {
  for (const select of document.querySelectorAll("select[data-plans]")) {
    const current = select.value;
    replace(select, h("option", { value: "" }, "no plan"), state.plans.map((p) => h("option", { value: p.name }, p.name)));
    select.value = state.plans.some((p) => p.name === current) ? current : "";
  }
}

function orgOptions(selected) {
  replace(els.org, state.orgs.map((o) => h("option", { value: o.name }, o.name)));
  if (state.orgs.some((o) => o.name === selected)) els.org.value = selected;
}

/** Plans and organizations, then the current section. */
export async function loadOperator(selectOrg) {
  await attempt(async () => {
    const [plans, orgs] = await Promise.all([admin.get("/plans"), admin.get("/organizations")]);
    state.plans = plans.data ?? [];
    state.orgs = orgs.data ?? [];
    orgOptions(selectOrg ?? els.org.value);
    planOptions();
  });
  await showSection(state.section);
}

// Organizations --------------------------------------------------------------------------------

function fillOrgEdit() {
  const o = org();
  const form = els.orgEdit;
  els.orgEditName.textContent = o ? o.name : "—";
  const q = o?.policy?.quota ?? {};
  form.elements.namedItem("plan").value = o?.policy?.plan ?? "";
  for (const name of ["rpm", "tpm", "max_concurrent", "budget_tokens"]) {
    form.elements.namedItem(name).value = q[name] ? String(q[name]) : "";
  }
  form.elements.namedItem("budget_period").value = q.budget_period === "none" ? "" : (q.budget_period ?? "");
}

async function renderOrgs() {
  fillTable(
    $("op-orgs-table"),
    [
      { label: "name", value: (o) => h("b", null, o.name) },
      { label: "id", value: (o) => h("code", null, o.id) },
      { label: "plan", value: (o) => (o.policy?.plan ? h("span", { class: "badge plan" }, o.policy.plan) : "—") },
      { label: "limits", value: (o) => limits(o.policy?.quota) },
      { label: "budget", value: (o) => budget(o.policy?.quota) },
      { label: "created (UTC)", value: (o) => fmtTime(o.created) },
      {
        label: "",
        value: (o) =>
          h(
            "button",
            {
              type: "button",
              class: "small secondary",
              onclick: () => {
                els.org.value = o.name;
                renderOrgs();
              },
            },
            o.name === els.org.value ? "Selected" : "Select",
          ),
      },
    ],
    state.orgs,
    "No organizations yet.",
  );
  fillOrgEdit();
}

async function createOrg(form) {
  const name = textField(form, "name");
  const plan = textField(form, "plan");
  const created = await attempt(() => admin.post("/organizations", plan ? { name, plan } : { name }));
  if (!created) return;
  form.reset();
  await loadOperator(created.name);
  notice(`Organization ${created.name} created${plan ? ` on the ${plan} plan` : ""}.`);
}

async function editOrg(form) {
  const o = org();
  if (!o) return;
  const body = { plan: textField(form, "plan"), quota: quotaOf(form) };
  const updated = await attempt(() => admin.patch(`/organizations/${encodeURIComponent(o.name)}`, body));
  if (!updated) return;
  await loadOperator(o.name);
  notice(`Saved the plan and limits of ${o.name}.`);
}

// Projects ---------------------------------------------------------------------------------------

async function fetchProjects() {
  const o = org();
  state.projects = o ? ((await admin.get("/projects", { org: o.name })).data ?? []) : [];
  const select = els.keyCreate.elements.namedItem("project");
  const current = select.value;
  replace(
    select,
    h("option", { value: "" }, "default project"),
    state.projects.filter((p) => !p.is_default).map((p) => h("option", { value: p.name }, p.name)),
  );
  select.value = state.projects.some((p) => p.name === current) ? current : "";
}

async function loadProjects() {
  await fetchProjects();
  fillTable(
    $("op-projects-table"),
    [
      { label: "name", value: (p) => [h("b", null, p.name), p.is_default ? h("span", { class: "badge" }, "default") : ""] },
      { label: "id", value: (p) => h("code", null, p.id) },
      { label: "limits", value: (p) => limits(p.policy?.quota) },
      { label: "budget", value: (p) => budget(p.policy?.quota) },
      { label: "created (UTC)", value: (p) => fmtTime(p.created) },
    ],
    state.projects,
    org() ? "No projects." : "Create an organization first.",
  );
}

async function createProject(form) {
  const o = org();
  if (!o) return showAlert(els.error, "Create an organization first.");
  const body = { org: o.name, name: textField(form, "name"), quota: quotaOf(form) };
  const created = await attempt(() => admin.post("/projects", body));
  if (!created) return;
  form.reset();
  await attempt(loadProjects);
  notice(`Project ${created.name} created in ${o.name}.`);
}

// Keys -------------------------------------------------------------------------------------------

function showSecret(title, secret) {
  els.secretTitle.textContent = title;
  els.secretValue.textContent = secret;
  els.secret.hidden = false;
  els.secret.scrollIntoView({ block: "nearest" });
}

function hideSecret() {
  els.secretValue.textContent = "";
  els.secret.hidden = true;
}

function keyActions(k) {
  if (k.state === "revoked") return "";
  return h(
    "div",
    { class: "row-actions" },
    h(
      "button",
      { type: "button", class: "small secondary", onclick: () => rotateKey(k) },
      "Rotate",
    ),
    confirmButton(`key:${k.id}`, "Revoke", "Confirm revoke", () => revokeKey(k)),
  );
}

const loadKeys = latestOnly(async (current) => {
  const o = org();
  const [keys] = await Promise.all([
    o ? admin.get("/keys", { org: o.name }).then((r) => r.data ?? []) : [],
    fetchProjects(),
  ]);
  if (!current()) return;
  fillTable(
    $("op-keys-table"),
    [
      { label: "name", value: (k) => h("b", null, k.name) },
      { label: "id", value: (k) => h("code", null, k.id) },
      {
        label: "fingerprint",
        value: (k) => [
          h("code", null, k.fingerprint),
          k.previous_fingerprint
            ? h("div", { class: "hint" }, `previous `, h("code", null, k.previous_fingerprint), ` until ${fmtTime(k.previous_expires)}`)
            : "",
        ],
      },
      { label: "project", value: (k) => k.project_name },
      { label: "state", value: (k) => h("span", { class: `badge ${k.state === "active" ? "ok" : "bad"}` }, k.state) },
      { label: "models", value: (k) => (k.allowed_models?.length ? k.allowed_models.join(", ") : "any") },
      { label: "IP allowlist", value: (k) => (k.allowed_ips?.length ? k.allowed_ips.join(", ") : "any") },
      { label: "limits", value: (k) => limits(k.quota) },
      { label: "budget", value: (k) => budget(k.quota) },
      { label: "expires (UTC)", value: (k) => fmtTime(k.expires) },
      { label: "", value: keyActions },
    ],
    keys,
    o ? "No keys yet." : "Create an organization first.",
  );
});

async function createKey(form) {
  const o = org();
  if (!o) return showAlert(els.error, "Create an organization first.");
  const body = {
    org: o.name,
    name: textField(form, "name"),
    project: textField(form, "project"),
    allowed_models: listField(form, "allowed_models"),
    allowed_ips: listField(form, "allowed_ips"),
    expires_in_seconds: intField(form, "expires_days") * 86_400,
    quota: quotaOf(form),
  };
  const created = await attempt(() => admin.post("/keys", body));
  if (!created) return;
  form.reset();
  showSecret(`New key ${created.key.name} (${created.key.id})`, created.secret);
  await attempt(loadKeys);
}

async function rotateKey(k) {
  const grace = Number(els.grace.value) || 0;
  const rotated = await attempt(() => admin.post(`/keys/${encodeURIComponent(k.id)}/rotate`, { grace_seconds: grace }));
  if (!rotated) return;
  showSecret(`New secret for ${k.name} (${k.id})`, rotated.secret);
  await attempt(loadKeys);
  notice(
    grace
      ? `Key ${k.name} rotated; the previous secret works until ${fmtTime(rotated.key.previous_expires)} UTC.`
      : `Key ${k.name} rotated; the previous secret no longer works.`,
  );
}

async function revokeKey(k) {
  const revoked = await attempt(() => admin.post(`/keys/${encodeURIComponent(k.id)}/revoke`));
  if (!revoked) return;
  await attempt(loadKeys);
  notice(`Key ${k.name} (${k.id}) revoked: it stops authenticating at once.`);
}

// Provider credentials -------------------------------------------------------------------------

const loadProviders = latestOnly(async (current) => {
  const o = org();
  const providers = o ? ((await admin.get("/providers", { org: o.name })).data ?? []) : [];
  if (!current()) return;
  fillTable(
    $("op-providers-table"),
    [
      { label: "provider", value: (p) => h("b", null, p.provider) },
      { label: "name", value: (p) => p.name },
      { label: "fingerprint", value: (p) => h("code", null, p.fingerprint) },
      { label: "id", value: (p) => h("code", null, p.id) },
      { label: "added (UTC)", value: (p) => fmtTime(p.created) },
      { label: "", value: (p) => confirmButton(`provider:${p.id}`, "Remove", "Confirm remove", () => removeProvider(p)) },
    ],
    providers,
    o ? "No provider credentials: only hosted models are available." : "Create an organization first.",
  );
});

async function addProvider(form) {
  const o = org();
  if (!o) return showAlert(els.error, "Create an organization first.");
  const body = {
    org: o.name,
    provider: textField(form, "provider"),
    api_key: form.elements.namedItem("api_key").value,
    name: textField(form, "name"),
  };
  const added = await attempt(() => admin.post("/providers", body));
  // The provider's key leaves the page as soon as it has been sent.
  form.elements.namedItem("api_key").value = "";
  if (!added) return;
  form.reset();
  await attempt(loadProviders);
  notice(`Added ${added.provider} credential ${added.name} (${added.fingerprint}) to ${o.name}.`);
}

async function removeProvider(p) {
  const removed = await attempt(() => admin.delete(`/providers/${encodeURIComponent(p.id)}`));
  if (!removed) return;
  await attempt(loadProviders);
  notice(`Removed ${p.provider} credential ${p.name}.`);
}

// Plans ------------------------------------------------------------------------------------------

function editPlan(p) {
  const form = els.planPut;
  form.elements.namedItem("name").value = p.name;
  for (const name of ["monthly_tokens", "rpm", "tpm", "max_concurrent", "max_context"]) {
    form.elements.namedItem(name).value = Number(p[name]) ? String(p[name]) : "";
  }
  form.scrollIntoView({ block: "nearest" });
}

async function renderPlans() {
  fillTable(
    $("op-plans-table"),
    [
      { label: "name", value: (p) => h("b", null, p.name) },
      { label: "monthly tokens", value: (p) => limit(p.monthly_tokens), class: "num" },
      { label: "requests / min", value: (p) => limit(p.rpm), class: "num" },
      { label: "tokens / min", value: (p) => limit(p.tpm), class: "num" },
      { label: "concurrent", value: (p) => limit(p.max_concurrent), class: "num" },
      { label: "max context", value: (p) => limit(p.max_context), class: "num" },
      { label: "organizations", value: (p) => fmtInt(state.orgs.filter((o) => o.policy?.plan === p.name).length), class: "num" },
      { label: "", value: (p) => h("button", { type: "button", class: "small secondary", onclick: () => editPlan(p) }, "Edit") },
    ],
    state.plans,
    "No plans.",
  );
}

async function putPlan(form) {
  const name = textField(form, "name");
  const body = {};
  for (const field of ["monthly_tokens", "rpm", "tpm", "max_concurrent", "max_context"]) {
    body[field] = intField(form, field);
  }
  const saved = await attempt(() => admin.put(`/plans/${encodeURIComponent(name)}`, body));
  if (!saved) return;
  form.reset();
  await loadOperator();
  notice(`Plan ${saved.name} saved.`);
}

// Wiring -----------------------------------------------------------------------------------------

function onSubmit(form, handler) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      await handler(form);
    } finally {
      button.disabled = false;
    }
  });
}

/** Forgets what the operator view showed (on leaving it). */
export function clearOperator() {
  hideSecret();
  state.orgs = [];
  state.projects = [];
  showAlert(els.error, "");
  showAlert(els.notice, "");
}

export function initOperator({ useKey }) {
  state.useKey = useKey;
  Object.assign(els, {
    org: $("op-org"),
    error: $("op-error"),
    notice: $("op-notice"),
    subtabs: [...document.querySelectorAll("#page-operator .subtabs button")],
    orgEdit: $("op-org-edit"),
    orgEditName: $("op-org-edit-name"),
    keyCreate: $("op-key-create"),
    planPut: $("op-plan-put"),
    grace: $("op-rotate-grace"),
    secret: $("op-secret"),
    secretTitle: $("op-secret-title"),
    secretValue: $("op-secret-value"),
  });
  for (const button of els.subtabs) {
    button.addEventListener("click", () => showSection(button.dataset.section));
  }
  els.org.addEventListener("change", () => {
    hideSecret();
    renderSection();
  });
  onSubmit($("op-org-create"), createOrg);
  onSubmit(els.orgEdit, editOrg);
  onSubmit(els.keyCreate, createKey);
  onSubmit($("op-project-create"), createProject);
  onSubmit($("op-provider-add"), addProvider);
  onSubmit(els.planPut, putPlan);
  $("op-secret-dismiss").addEventListener("click", hideSecret);
  $("op-secret-copy").addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(els.secretValue.textContent);
      notice("Copied to the clipboard.");
    } catch (err) {
      showAlert(els.error, `Could not copy (${err.message}); select the key and copy it.`);
    }
  });
  $("op-secret-use").addEventListener("click", () => {
    const secret = els.secretValue.textContent;
    hideSecret();
    state.useKey(secret);
  });
}
