"""The two charts of docs/PERFORMANCE.md: aggregate throughput and time to first token against
concurrency, Sluice beside the onnxruntime-genai baselines. matplotlib, Agg backend (no display).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

OURS, GENERATOR, ENGINE = "tab:blue", "tab:orange", "tab:green"


def _sorted(section: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    return sorted(((int(k), v) for k, v in section.items()), key=lambda kv: kv[0])


def _axis(ax: Any, xs: list[int], ylabel: str, title: str) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs)
    ax.set_xticklabels([str(x) for x in xs])
    ax.set_xlabel("requests at once (batch size for og.Generator)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.set_ylim(bottom=0)
    ax.legend()


def throughput_chart(results: dict[str, Any], path: Path) -> Path:
    """Aggregate tok/s (prefill included) against concurrency."""
    ours = _sorted(results.get("ours", {}))
    gen = _sorted(results.get("genai_generator", {}))
    engine = results.get("genai_engine")
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    ax.plot(
        [c for c, _ in ours],
        [s["aggregate_tok_s"] for _, s in ours],
        "o-",
        color=OURS,
        label="Sluice over HTTP (streaming)",
    )
    if gen:
        ax.plot(
            [b for b, _ in gen],
            [g["tok_s_incl_prefill"] for _, g in gen],
            "s--",
            color=GENERATOR,
            label="og.Generator, static batch",
        )
    if engine:
        ax.plot(
            [engine["requests"]],
            [engine["aggregate_tok_s"]],
            "D",
            ms=8,
            color=ENGINE,
            label="og.Engine",
        )
    xs = sorted({c for c, _ in ours} | {b for b, _ in gen})
    _axis(ax, xs, "tokens/s, all streams, prefill included", "Aggregate throughput")
    return _save(fig, path)


def ttft_chart(results: dict[str, Any], path: Path) -> Path:
    """TTFT p50 and p95 against concurrency (og.Generator: the batch's prefill)."""
    ours = _sorted(results.get("ours", {}))
    gen = _sorted(results.get("genai_generator", {}))
    engine = results.get("genai_engine")
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    cs = [c for c, _ in ours]
    ax.plot(cs, [s["ttft_ms"]["p50"] for _, s in ours], "o-", color=OURS, label="Sluice p50")
    ax.plot(cs, [s["ttft_ms"]["p95"] for _, s in ours], "o:", color=OURS, label="Sluice p95")
    if gen:
        ax.plot(
            [b for b, _ in gen],
            [g["ttft_ms"] for _, g in gen],
            "s--",
            color=GENERATOR,
            label="og.Generator (prefill)",
        )
    if engine:
        ax.plot(
            [engine["requests"]],
            [engine["ttft_ms"]["p50"]],
            "D",
            ms=8,
            color=ENGINE,
            label="og.Engine p50",
        )
        ax.plot(
            [engine["requests"]],
            [engine["ttft_ms"]["p95"]],
            "d",
            ms=8,
            color=ENGINE,
            mfc="none",
            label="og.Engine p95",
        )
    xs = sorted(set(cs) | {b for b, _ in gen})
    _axis(ax, xs, "milliseconds", "Time to first token")
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_charts(results: dict[str, Any], img_dir: Path) -> list[Path]:
    return [
        throughput_chart(results, img_dir / "throughput.png"),
        ttft_chart(results, img_dir / "ttft.png"),
    ]
