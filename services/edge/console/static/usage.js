// "Usage": the organization's ledger through /v1/usage, /v1/usage/totals and /v1/usage/budgets.

import { download, v1 } from "./api.js";
import { SERIES_CLASSES, budgetBar, horizontalBars, stackedColumns } from "./charts.js";
import { $, fillTable, fmtInt, fmtMs, fmtTime, h, replace, showAlert } from "./dom.js";

const DAY_S = 86_400;
const MAX_DAYS = 92;
const els = {};
// Each load draws only while it is the latest one, so that a slow answer to an earlier choice
// of filters never overwrites the answer to a later one.
let generation = 0;
const latest = () => {
  const mine = ++generation;
  return () => mine === generation;
};

function isoDay(date) {
  return date.toISOString().slice(0, 10);
}

function daySeconds(iso) {
  return Date.parse(`${iso}T00:00:00Z`) / 1000;
}

/** The filters of the form as query parameters; the range is [from, to + 1 day) in UTC. */
function filters() {
  const start = daySeconds(els.from.value);
  const end = daySeconds(els.to.value) + DAY_S;
  if (!Number.isFinite(start) || !Number.isFinite(end) || end <= start) {
    throw new Error("Pick a range whose start is not after its end.");
  }
  if ((end - start) / DAY_S > MAX_DAYS) throw new Error(`Pick at most ${MAX_DAYS} days.`);
  return {
    start_time: start,
    end_time: end,
    project_id: els.project.value.trim(),
    key_id: els.key.value.trim(),
    model: els.model.value.trim(),
  };
}

function days(start, end) {
  const out = [];
  for (let t = start; t < end; t += DAY_S) out.push(isoDay(new Date(t * 1000)));
  return out;
}

/**
 * Tokens per day split by model, key or project. The API groups by one thing at a time, so the
 * days that have usage are asked for their split one by one (a day is [00:00, 24:00) UTC, the
 * ledger's own day).
 */
async function dailySplit(q, split) {
  const perDay = (await v1.get("/usage/totals", { ...q, group_by: "day" })).data ?? [];
  const splits = await Promise.all(
    perDay.map(async (d) => {
      const start = daySeconds(d.group);
      const rows = await v1.get("/usage/totals", {
        ...q,
        group_by: split,
        start_time: Math.max(start, q.start_time),
        end_time: Math.min(start + DAY_S, q.end_time),
      });
      return [d.group, rows.data ?? []];
    }),
  );
  return new Map(splits);
}

function seriesOf(labels, byDay, totals) {
  // Largest groups first, so that colours follow the totals chart; the tail shares one colour.
  const order = [...totals].sort((a, b) => b.total_tokens - a.total_tokens).map((t) => t.group);
  const keep = order.length <= SERIES_CLASSES ? order : order.slice(0, SERIES_CLASSES - 1);
  const rest = order.slice(keep.length);
  const series = keep.map((name, i) => ({ name: name || "(none)", group: name, cls: `s${i}`, values: [] }));
  const other = { name: `${rest.length} others`, cls: `s${SERIES_CLASSES - 1}`, values: [] };
  labels.forEach((day, i) => {
    const rows = byDay.get(day) ?? [];
    for (const s of series) s.values[i] = rows.find((r) => r.group === s.group)?.total_tokens ?? 0;
    other.values[i] = rows.filter((r) => rest.includes(r.group)).reduce((n, r) => n + r.total_tokens, 0);
  });
  return rest.length ? [...series, other] : series;
}

function summary(totals) {
  const sum = (f) => totals.reduce((n, t) => n + (t[f] || 0), 0);
  const card = (label, value) => h("div", { class: "stat card" }, h("span", { class: "stat-label" }, label), h("b", null, value));
  replace(
    els.summary,
    card("Requests", fmtInt(sum("requests"))),
    card("Total tokens", fmtInt(sum("total_tokens"))),
    card("Prompt tokens", fmtInt(sum("prompt_tokens"))),
    card("Completion tokens", fmtInt(sum("completion_tokens"))),
  );
}

async function loadCharts(q, current) {
  const split = els.split.value;
  const [totals, byDay] = await Promise.all([
    v1.get("/usage/totals", { ...q, group_by: split }).then((r) => r.data ?? []),
    dailySplit(q, split),
  ]);
  if (!current()) return;
  const labels = days(q.start_time, q.end_time);
  const series = seriesOf(labels, byDay, totals);
  summary(totals);
  els.dailyTitle.textContent = `Tokens per day, by ${split}`;
  replace(els.daily, stackedColumns({ labels, series }));
  replace(
    els.legend,
    series.map((s) => h("li", null, h("span", { class: `swatch ${s.cls}` }), s.name)),
  );
  els.splitTitle.textContent = `Totals by ${split}`;
  const clsOf = new Map(series.map((s) => [s.group, s.cls]));
  const sorted = [...totals].sort((a, b) => b.total_tokens - a.total_tokens);
  replace(
    els.splitChart,
    horizontalBars(
      sorted.map((t) => ({ label: t.group || "(none)", value: t.total_tokens, cls: clsOf.get(t.group) ?? `s${SERIES_CLASSES - 1}` })),
    ),
  );
  fillTable(
    els.splitTable,
    [
      { label: split, value: (t) => h("code", null, t.group || "(none)") },
      { label: "requests", value: (t) => fmtInt(t.requests), class: "num" },
      { label: "prompt", value: (t) => fmtInt(t.prompt_tokens), class: "num" },
      { label: "completion", value: (t) => fmtInt(t.completion_tokens), class: "num" },
      { label: "total", value: (t) => fmtInt(t.total_tokens), class: "num" },
    ],
    sorted,
    "No usage in this range.",
  );
}

async function loadBudgets(current) {
  const budgets = (await v1.get("/usage/budgets")).data ?? [];
  if (!current()) return;
  if (!budgets.length) {
    replace(els.budgets, h("p", { class: "empty" }, "No token budget applies to this key."));
    return;
  }
  replace(
    els.budgets,
    budgets.map((b) => {
      const limit = Number(b.limit_tokens) || 0;
      const used = Number(b.used_tokens) || 0;
      const reserved = Number(b.reserved_tokens) || 0;
      const period = b.period && b.period !== "none" ? `per ${b.period}` : "for good";
      const since = b.period_start_ms ? ` since ${fmtTime(b.period_start_ms / 1000).slice(0, 10)}` : "";
      return h(
        "div",
        { class: "budget", dataset: { scope: b.scope } },
        h("div", { class: "budget-head" }, h("b", null, b.scope), h("code", null, b.scope_id), h("span", { class: "hint" }, `${period}${since}`)),
        budgetBar(limit, used, reserved),
        h(
          "div",
          { class: "budget-numbers" },
          h("span", { class: "used-label" }, `${fmtInt(used)} used`),
          h("span", { class: "reserved-label" }, `${fmtInt(reserved)} reserved`),
          h("span", null, `of ${fmtInt(limit)} tokens (${fmtInt(Math.max(0, limit - used - reserved))} left)`),
        ),
      );
    }),
  );
}

const STATUS_CLASS = { ok: "ok", rejected: "warn", error: "bad", cancelled: "warn", expired: "warn" };

async function loadRecords(q, current) {
  const rows = (await v1.get("/usage", { ...q, limit: els.limit.value })).data ?? [];
  if (!current()) return;
  fillTable(
    els.records,
    [
      { label: "time (UTC)", value: (r) => fmtTime(r.created), class: "nowrap" },
      { label: "model", value: (r) => h("span", { title: r.model_digest || "" }, r.model), class: "nowrap" },
      { label: "status", value: (r) => h("span", { class: `badge ${STATUS_CLASS[r.status] ?? ""}` }, r.status) },
      { label: "prompt", value: (r) => fmtInt(r.prompt_tokens), class: "num" },
      { label: "completion", value: (r) => fmtInt(r.completion_tokens), class: "num" },
      { label: "latency", value: (r) => fmtMs(r.latency_ms), class: "num" },
      { label: "first token", value: (r) => (r.ttft_ms ? fmtMs(r.ttft_ms) : "—"), class: "num" },
      { label: "key", value: (r) => h("code", null, r.key_id) },
      { label: "project", value: (r) => h("code", null, r.project_id) },
      { label: "endpoint", value: (r) => r.endpoint },
      { label: "client", value: (r) => r.client_ip },
      { label: "request", value: (r) => h("code", { class: "request-id" }, r.request_id) },
    ],
    rows,
    "No requests in this range.",
  );
}

export async function loadUsage() {
  showAlert(els.error, "");
  let q;
  try {
    q = filters();
  } catch (err) {
    showAlert(els.error, err.message);
    return;
  }
  const current = latest();
  const results = await Promise.allSettled([
    loadCharts(q, current),
    loadBudgets(current),
    loadRecords(q, current),
  ]);
  const failed = results.find((r) => r.status === "rejected");
  if (failed && current()) showAlert(els.error, failed.reason.message);
}

async function exportCsv(path, params, name) {
  showAlert(els.error, "");
  try {
    const response = await v1.raw("GET", path, { params: { ...filters(), ...params, format: "csv" } });
    await download(response, `${name}-${els.from.value}-to-${els.to.value}.csv`);
  } catch (err) {
    showAlert(els.error, err.message);
  }
}

export function initUsage() {
  Object.assign(els, {
    form: $("usage-filters"),
    from: $("usage-from"),
    to: $("usage-to"),
    split: $("usage-split"),
    project: $("usage-project"),
    key: $("usage-key"),
    model: $("usage-model"),
    error: $("usage-error"),
    summary: $("usage-summary"),
    daily: $("usage-daily"),
    dailyTitle: $("usage-daily-title"),
    legend: $("usage-legend"),
    splitTitle: $("usage-split-title"),
    splitChart: $("usage-split-chart"),
    splitTable: $("usage-split-table"),
    budgets: $("usage-budgets"),
    records: $("usage-records"),
    limit: $("usage-limit"),
  });
  const today = new Date();
  els.to.value = isoDay(today);
  els.from.value = isoDay(new Date(today.getTime() - 13 * DAY_S * 1000));
  els.form.addEventListener("submit", (event) => {
    event.preventDefault();
    loadUsage();
  });
  els.split.addEventListener("change", () => loadUsage());
  els.limit.addEventListener("change", () => loadUsage());
  $("usage-csv-records").addEventListener("click", () =>
    exportCsv("/usage", { limit: els.limit.value }, "sluice-requests"),
  );
  $("usage-csv-totals").addEventListener("click", () =>
    exportCsv("/usage/totals", { group_by: "day" }, "sluice-daily-totals"),
  );
}
