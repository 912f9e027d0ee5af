"""The gateway benchmark's charts in docs/img: requests per second and latency against
concurrency for every path, and CPU per request per process. matplotlib, Agg backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

from bench.gateway_report import PROCESSES, label  # noqa: E402

STYLE = {
    "direct": ("tab:gray", "o"),
    "litellm": ("tab:red", "s"),
    "byok": ("tab:blue", "D"),
    "hosted": ("tab:green", "^"),
}


def _series(results: dict[str, Any], name: str, pick: Any) -> tuple[list[int], list[float]]:
    by_c = results.get("rows", {}).get(name, {})
    pairs = sorted((int(c), row) for c, row in by_c.items() if row.get("latency_ms"))
    return [c for c, _ in pairs], [pick(row) for _, row in pairs]


def _style(meta: dict[str, Any]) -> tuple[str, str, str]:
    color, marker = STYLE.get(meta.get("kind", ""), ("black", "x"))
    line = "--" if meta.get("database") == "postgres" else "-"
    return color, marker, line


def _axis(ax: Any, xs: list[int], ylabel: str, title: str) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs)
    ax.set_xticklabels([str(x) for x in xs])
    ax.set_yscale("log")
    ax.set_xlabel("requests in flight (closed loop)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)


def throughput_chart(results: dict[str, Any], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    version = results.get("litellm_version", "?")
    xs: set[int] = set()
    for name, meta in results.get("targets", {}).items():
        cs, ys = _series(results, name, lambda r: r["req_s"])
        color, marker, line = _style(meta)
        ax.plot(
            cs, ys, marker=marker, linestyle=line, color=color, label=label(name, meta, version)
        )
        xs.update(cs)
    _axis(ax, sorted(xs), "answered requests per second", "Throughput, non-streaming chat")
    return _save(fig, path)


def latency_chart(results: dict[str, Any], path: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), dpi=120, sharey=True)
    version = results.get("litellm_version", "?")
    for ax, q in zip(axes, ("p50", "p99"), strict=True):
        xs: set[int] = set()
        for name, meta in results.get("targets", {}).items():
            cs, ys = _series(results, name, lambda r, q=q: r["latency_ms"][q])
            color, marker, line = _style(meta)
            ax.plot(
                cs, ys, marker=marker, linestyle=line, color=color, label=label(name, meta, version)
            )
            xs.update(cs)
        _axis(ax, sorted(xs), "milliseconds", f"Latency {q}")
    return _save(fig, path)


def _short(meta: dict[str, Any]) -> str:
    if meta.get("kind") == "litellm":
        return "LiteLLM"
    kind = {"byok": "BYOK"}.get(str(meta.get("kind")), str(meta.get("kind")))
    return f"{kind}\n{'PG' if meta.get('database') == 'postgres' else 'SQLite'}"


def cpu_chart(results: dict[str, Any], path: Path) -> Path:
    """Stacked CPU ms per request: each Sluice BYOK stack's services, and the LiteLLM proxy."""
    bars: list[tuple[str, dict[str, float]]] = []
    for name, meta in results.get("targets", {}).items():
        if meta.get("kind") not in ("byok", "litellm"):
            continue
        for c, row in sorted(results["rows"].get(name, {}).items(), key=lambda kv: int(kv[0])):
            cpu = row.get("cpu_ms_per_request") or {}
            parts = (
                {"LiteLLM proxy": cpu.get("litellm", 0.0)}
                if meta["kind"] == "litellm"
                else {p: cpu.get(p, 0.0) for p in PROCESSES}
            )
            bars.append((f"{_short(meta)}\nc={c}", parts))
    fig, ax = plt.subplots(figsize=(max(6.4, 0.8 * len(bars)), 4.2), dpi=120)
    colors = {"edge": "tab:blue", "auth": "tab:orange", "metering": "tab:purple",
              "engine": "tab:olive", "LiteLLM proxy": "tab:red"}  # fmt: skip
    bottoms = [0.0] * len(bars)
    for part in (*PROCESSES, "LiteLLM proxy"):
        heights = [b[1].get(part, 0.0) for b in bars]
        if not any(heights):
            continue
        ax.bar(range(len(bars)), heights, bottom=bottoms, color=colors[part], label=part)
        bottoms = [x + h for x, h in zip(bottoms, heights, strict=True)]
    ax.set_xticks(range(len(bars)))
    ax.set_xticklabels([b[0] for b in bars], fontsize=7)
    ax.set_ylabel("CPU milliseconds per request")
    ax.set_title("CPU per request, by process")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_charts(results: dict[str, Any], img_dir: Path) -> list[Path]:
    return [
        throughput_chart(results, img_dir / "gateway-throughput.png"),
        latency_chart(results, img_dir / "gateway-latency.png"),
        cpu_chart(results, img_dir / "gateway-cpu.png"),
    ]
