"""The performance targets, evaluated from a results dict: met, not met, or not measured.

Pure functions over the structure `bench.run` writes to results.json, so the verdicts can be
recomputed from a saved file and tested without a model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# Thresholds, named as the design brief states them.
TTFT_P50_MAX_MS = 800.0
TTFT_P95_MAX_MS = 1500.0
STATIC_BATCH_RATIO = 1.0
ENGINE_RATIO = 1.5
GATEWAY_P50_MAX_MS = 3.0
BATCH = 16  # the concurrency targets (b) and (d) speak about


@dataclass(frozen=True)
class Verdict:
    """One row of the targets table."""

    key: str  # "a", "b1", ...
    target: str  # what is required, in words
    measured: str  # the numbers it was judged on
    met: bool | None  # None: not measured in this run

    def status(self) -> str:
        return {True: "met", False: "not met", None: "not measured"}[self.met]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status()}


def _get(results: dict[str, Any], *path: str) -> Any:
    node: Any = results
    for part in path:
        if not isinstance(node, dict) or node.get(part) is None:
            return None
        node = node[part]
    return node


def _ratio_verdict(
    key: str, target: str, ours: float | None, theirs: float | None, ratio: float, unit: str
) -> Verdict:
    if ours is None or theirs is None:
        return Verdict(key, target, "not measured in this run", None)
    measured = f"{ours:.1f} vs {theirs:.1f} {unit} ({ours / theirs:.2f}x)"
    return Verdict(key, target, measured, ours >= ratio * theirs)


def evaluate(results: dict[str, Any]) -> list[Verdict]:
    """Every target, in the order of the brief."""
    b = str(BATCH)
    verdicts = [
        _ratio_verdict(
            "a",
            "1 stream through the HTTP stack: decode tok/s >= og.Generator batch 1 decode tok/s",
            _get(results, "ours", "1", "decode_tok_s_per_stream"),
            _get(results, "genai_generator", "1", "decode_tok_s_per_stream"),
            1.0,
            "tok/s",
        ),
        _ratio_verdict(
            "b1",
            f"{BATCH} at once: aggregate tok/s incl. prefill >= {STATIC_BATCH_RATIO:g}x "
            f"og.Generator static batch {BATCH} incl. prefill",
            _get(results, "ours", b, "aggregate_tok_s"),
            _get(results, "genai_generator", b, "tok_s_incl_prefill"),
            STATIC_BATCH_RATIO,
            "tok/s",
        ),
    ]
    engine_requests = _get(results, "genai_engine", "requests")
    verdicts.append(
        _ratio_verdict(
            "b2",
            f"{BATCH} at once: aggregate tok/s >= {ENGINE_RATIO:g}x og.Engine with "
            f"{BATCH} requests",
            _get(results, "ours", b, "aggregate_tok_s"),
            _get(results, "genai_engine", "aggregate_tok_s") if engine_requests == BATCH else None,
            ENGINE_RATIO,
            "tok/s",
        )
    )
    ttft = _get(results, "ours", b, "ttft_ms")
    for key, pct, limit in (("b3", "p50", TTFT_P50_MAX_MS), ("b4", "p95", TTFT_P95_MAX_MS)):
        target = f"{BATCH} at once: TTFT {pct} <= {limit:g} ms"
        if ttft is None:
            verdicts.append(Verdict(key, target, "not measured in this run", None))
        else:
            verdicts.append(Verdict(key, target, f"{ttft[pct]:.0f} ms", ttft[pct] <= limit))
    added = _get(results, "gateway", "added_p50_ms")
    gateway_target = f"gateway (edge + auth + metering) adds <= {GATEWAY_P50_MAX_MS:g} ms at p50"
    if added is None:
        verdicts.append(Verdict("c", gateway_target, "not measured in this run", None))
    else:
        verdicts.append(
            Verdict("c", gateway_target, f"{added:+.2f} ms", added <= GATEWAY_P50_MAX_MS)
        )
    verdicts.append(_outputs_verdict(results))
    return verdicts


def _outputs_verdict(results: dict[str, Any]) -> Verdict:
    target = f"greedy outputs at concurrency {BATCH} equal the single-stream output"
    outputs = _get(results, "outputs")
    if outputs is None or outputs.get("concurrency") is None:
        return Verdict("d", target, "not measured in this run", None)
    at = outputs["concurrency"]
    measured = f"{outputs['compared'] - len(outputs['mismatched'])}/{outputs['compared']} equal"
    if at != BATCH:
        # A quick run compares at its largest concurrency: informative, but not the target.
        return Verdict("d", target, f"{measured} at concurrency {at} (not {BATCH})", None)
    return Verdict("d", target, measured, bool(outputs["all_equal"]))
