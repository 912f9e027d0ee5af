// Charts drawn as SVG, sized by viewBox so that they scale with their card. Colours come from
// the stylesheet's series classes (s0 ... s7), never from inline styles.

import { fmtCompact, fmtInt, svg } from "./dom.js";

export const SERIES_CLASSES = 8;

function niceStep(span) {
  if (span <= 0) return 1;
  const raw = span / 4;
  const power = 10 ** Math.floor(Math.log10(raw));
  const unit = raw / power;
  return (unit <= 1 ? 1 : unit <= 2 ? 2 : unit <= 5 ? 5 : 10) * power;
}

function shorten(text, max) {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

/**
 * Stacked columns: one per label (a day), one segment per series.
 * series: [{name, values: [number per label], cls}]
 */
export function stackedColumns({ labels, series, unit = "tokens" }) {
  const W = 640;
  const H = 260;
  const m = { top: 12, right: 8, bottom: 30, left: 52 };
  const plotW = W - m.left - m.right;
  const plotH = H - m.top - m.bottom;
  const totals = labels.map((_, i) => series.reduce((sum, s) => sum + (s.values[i] || 0), 0));
  const peak = Math.max(0, ...totals);
  const step = niceStep(peak);
  const top = Math.max(step, Math.ceil(peak / step) * step);
  const y = (v) => m.top + plotH - (v / top) * plotH;
  const band = plotW / Math.max(1, labels.length);
  const barW = Math.max(2, Math.min(40, band * 0.68));

  const root = svg("svg", {
    viewBox: `0 0 ${W} ${H}`,
    class: "chart-svg",
    role: "img",
    "aria-label": `${unit} per day`,
  });
  for (let v = 0; v <= top + 1e-9; v += step) {
    root.append(
      svg("line", { class: "grid", x1: m.left, x2: W - m.right, y1: y(v), y2: y(v) }),
      svg("text", { class: "axis", x: m.left - 6, y: y(v) + 4, "text-anchor": "end" }, fmtCompact(v)),
    );
  }
  const every = Math.ceil(labels.length / 10);
  labels.forEach((label, i) => {
    const x = m.left + i * band + (band - barW) / 2;
    let base = 0;
    for (const s of series) {
      const v = s.values[i] || 0;
      if (v <= 0) continue;
      const y0 = y(base);
      const y1 = y(base + v);
      root.append(
        svg(
          "rect",
          { class: `bar ${s.cls}`, x, y: y1, width: barW, height: Math.max(1, y0 - y1) },
          svg("title", null, `${label} · ${s.name}: ${fmtInt(v)} ${unit}`),
        ),
      );
      base += v;
    }
    // Counted from the last day (today, by default), so that it always has its label.
    if ((labels.length - 1 - i) % every === 0) {
      root.append(
        svg("text", { class: "axis", x: x + barW / 2, y: H - 10, "text-anchor": "middle" }, label.slice(5)),
      );
    }
  });
  root.append(svg("line", { class: "baseline", x1: m.left, x2: W - m.right, y1: y(0), y2: y(0) }));
  if (peak === 0) {
    root.append(svg("text", { class: "chart-empty", x: W / 2, y: H / 2, "text-anchor": "middle" }, "No usage in this range"));
  }
  return root;
}

/** Horizontal bars, largest first: rows [{label, value, cls, title}]. */
export function horizontalBars(rows, unit = "tokens") {
  const W = 640;
  const rowH = 28;
  const labelW = 200;
  const valueW = 70;
  const H = Math.max(1, rows.length) * rowH + 8;
  const peak = Math.max(1, ...rows.map((r) => r.value));
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart-svg", role: "img", "aria-label": `${unit} by group` });
  if (!rows.length) {
    root.append(svg("text", { class: "chart-empty", x: W / 2, y: H / 2 + 4, "text-anchor": "middle" }, "No usage in this range"));
    return root;
  }
  rows.forEach((row, i) => {
    const yMid = 4 + i * rowH + rowH / 2;
    const w = Math.max(2, ((W - labelW - valueW - 12) * row.value) / peak);
    root.append(
      svg("text", { class: "label", x: labelW - 8, y: yMid + 4, "text-anchor": "end" }, shorten(row.label, 28), svg("title", null, row.label)),
      svg(
        "rect",
        { class: `bar ${row.cls}`, x: labelW, y: yMid - 9, width: w, height: 18, rx: 3 },
        svg("title", null, row.title ?? `${row.label}: ${fmtInt(row.value)} ${unit}`),
      ),
      svg("text", { class: "value", x: labelW + w + 6, y: yMid + 4 }, fmtCompact(row.value)),
    );
  });
  return root;
}

/** A budget's used and reserved shares of its limit, as one bar. */
export function budgetBar(limit, used, reserved) {
  const W = 400;
  const H = 14;
  const share = (v) => (limit > 0 ? Math.min(W, (W * v) / limit) : 0);
  const u = share(used);
  const r = Math.min(W - u, share(reserved));
  return svg(
    "svg",
    { viewBox: `0 0 ${W} ${H}`, class: "budget-bar", preserveAspectRatio: "none", role: "img", "aria-label": "budget" },
    svg("rect", { class: "track", x: 0, y: 0, width: W, height: H, rx: 4 }),
    svg("rect", { class: "used", x: 0, y: 0, width: u, height: H }),
    svg("rect", { class: "reserved", x: u, y: 0, width: r, height: H }),
  );
}
