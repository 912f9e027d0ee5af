// DOM helpers. Elements are built with textContent and attributes only, never from HTML strings,
// so text from the API (model output included) is always shown as text.

const SVG_NS = "http://www.w3.org/2000/svg";

function applyProps(el, props) {
  for (const [name, value] of Object.entries(props ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "style") throw new Error("inline styles are refused by the console's CSP");
    if (name === "class") el.setAttribute("class", value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name === "value" || name === "checked" || name === "disabled" || name === "selected") {
      el[name] = value;
    } else el.setAttribute(name, value === true ? "" : String(value));
  }
}

function appendAll(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** An HTML element: h("td", {class: "num"}, "42"). */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  applyProps(el, props);
  return appendAll(el, children);
}

/** An SVG element, for the charts. */
export function svg(tag, props, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  applyProps(el, props);
  return appendAll(el, children);
}

export function $(id) {
  const el = document.getElementById(id);
  if (!el) throw new Error(`no element #${id}`);
  return el;
}

export function replace(el, ...children) {
  el.replaceChildren();
  return appendAll(el, children);
}

/** Shows `message` in an alert element, or hides it when empty. */
export function showAlert(el, message) {
  el.textContent = message || "";
  el.hidden = !message;
}

const numberFormat = new Intl.NumberFormat("en-US");
export const fmtInt = (n) => numberFormat.format(Number(n) || 0);

export function fmtCompact(n) {
  const v = Number(n) || 0;
  if (Math.abs(v) >= 1e9) return `${+(v / 1e9).toFixed(1)}B`;
  if (Math.abs(v) >= 1e6) return `${+(v / 1e6).toFixed(1)}M`;
  if (Math.abs(v) >= 1e4) return `${+(v / 1e3).toFixed(1)}k`;
  return numberFormat.format(v);
}

export function fmtMs(ms) {
  const v = Number(ms) || 0;
  return v >= 1000 ? `${(v / 1000).toFixed(2)} s` : `${Math.round(v)} ms`;
}

/** Unix seconds as "YYYY-MM-DD HH:MM:SS" UTC; "never" for 0. */
export function fmtTime(seconds) {
  if (!seconds) return "never";
  return new Date(Number(seconds) * 1000).toISOString().replace("T", " ").slice(0, 19);
}

/** The value of a form's field by name, as a number (0 when empty). */
export function intField(form, name) {
  const raw = form.elements.namedItem(name)?.value?.trim() ?? "";
  return raw === "" ? 0 : Math.max(0, Math.trunc(Number(raw)) || 0);
}

export function textField(form, name) {
  return (form.elements.namedItem(name)?.value ?? "").trim();
}

/** "a, b\nc" as ["a", "b", "c"]. */
export function listField(form, name) {
  return textField(form, name)
    .split(/[\s,]+/)
    .filter(Boolean);
}

/** Which confirm buttons are armed, by what they act on, and until when (ms since epoch). */
const armedUntil = new Map();
const ARM_MS = 5000;

/**
 * A button that asks for a second click before acting (no window.confirm, which a page cannot
 * style and a headless browser dismisses). `key` names what it acts on: the armed state belongs
 * to that, not to the element, so a table that re-renders between the two clicks keeps it.
 */
export function confirmButton(key, label, confirmLabel, action, props = {}) {
  const button = h("button", { type: "button", class: "danger small", ...props }, label);
  const show = (armed) => {
    button.textContent = armed ? confirmLabel : label;
    button.classList.toggle("armed", armed);
  };
  const armed = () => (armedUntil.get(key) ?? 0) > Date.now();
  // Shown armed until the key's expiry (a few ms past it, so that `armed()` is false by then).
  const showArmed = () => {
    show(true);
    window.setTimeout(() => {
      if (button.isConnected && !armed()) show(false);
    }, armedUntil.get(key) - Date.now() + 10);
  };
  if (armed()) showArmed();
  button.addEventListener("click", async () => {
    if (!armed()) {
      armedUntil.set(key, Date.now() + ARM_MS);
      showArmed();
      return;
    }
    armedUntil.delete(key);
    button.disabled = true;
    try {
      await action();
    } finally {
      button.disabled = false;
      show(false);
    }
  });
  return button;
}

/**
 * Wraps a loader that fetches then renders so that only the latest call renders: a slow answer
 * to an earlier call (a tab opened, then an action that reloads) never overwrites a newer one.
 * The loader receives `current()`, to check after each await.
 */
export function latestOnly(loader) {
  let generation = 0;
  return (...args) => {
    const mine = ++generation;
    return loader(() => mine === generation, ...args);
  };
}

/** A table from column specs [{label, value: row => text|Node, class}] and rows. */
export function fillTable(table, columns, rows, empty = "Nothing yet.") {
  const head = h("thead", null, h("tr", null, columns.map((c) => h("th", { class: c.class }, c.label))));
  const body = h(
    "tbody",
    null,
    rows.length
      ? rows.map((row) =>
          h("tr", null, columns.map((c) => h("td", { class: c.class }, c.value(row)))),
        )
      : h("tr", null, h("td", { class: "empty", colspan: columns.length }, empty)),
  );
  replace(table, head, body);
}
