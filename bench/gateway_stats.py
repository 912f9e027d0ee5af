"""The gateway benchmark's arithmetic: the order of the phases, the rows of its table (requests
per second, latency percentiles, added latency, errors, CPU per request per process) and the
verdicts on its targets.

Pure functions over plain dicts (what `bench.gateway_load` records and writes to gateway.json),
so that every number the report prints can be checked without a stack or a proxy.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from bench.metrics import percentile
from bench.targets import Verdict

DIRECT = "direct"
LITELLM = "litellm"
BYOK_ADDED_P50_MAX_MS = 4.0  # target 1: at concurrency 1
BYOK_RPS_RATIO = 3.0  # target 2: at concurrency 64, against LiteLLM
HOSTED_ADDED_P50_MAX_MS = 3.0  # target 3: the hosted gateway over the engine, at concurrency 1
LOW, HIGH = 1, 64  # the concurrencies targets 1 and 2 speak about


def rotated(names: Sequence[str], shift: int) -> list[str]:
    """`names` started at position `shift` (mod its length): each round of phases starts with
    another target, so that drift of the machine hits every target alike."""
    if not names:
        return []
    k = shift % len(names)
    return [*names[k:], *names[:k]]


def schedule(
    names: Sequence[str], concurrencies: Sequence[int], rounds: int
) -> list[tuple[int, int, str]]:
    """Every phase as (round, concurrency, target), in the order they run: concurrency by
    concurrency within a round, the targets rotated by one more for each (round, concurrency)
    and in reverse order in odd rounds, so that neither the first place nor the same
    predecessor falls to one target every time."""
    out = []
    step = 0
    for r in range(rounds):
        order = list(names) if r % 2 == 0 else list(reversed(names))
        for c in concurrencies:
            out.extend((r, c, name) for name in rotated(order, step))
            step += 1
    return out


def cpu_per_request_ms(cpu_s: Mapping[str, float], requests: int) -> dict[str, float]:
    """CPU milliseconds per request of each process over a phase (or phases)."""
    if requests <= 0:
        return {}
    return {name: seconds * 1e3 / requests for name, seconds in cpu_s.items()}


def summarize(phases: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One row of the table: the phases of one target at one concurrency, pooled.

    Each phase is {"latencies_ms": [...], "errors": {kind: n}, "wall_s": s, "cpu_s":
    {process: s}, "client_cpu_s": s}. Requests per second counts answered requests over the
    phases' wall time; errors are left out of the latencies but counted in CPU per request."""
    latencies = [x for p in phases for x in p["latencies_ms"]]
    errors: Counter[str] = Counter()
    cpu: Counter[str] = Counter()
    for p in phases:
        errors.update(p.get("errors") or {})
        cpu.update(p.get("cpu_s") or {})
    wall = sum(p["wall_s"] for p in phases)
    answered = len(latencies)
    requests = answered + sum(errors.values())
    row: dict[str, Any] = {
        "phases": len(phases),
        "requests": requests,
        "answered": answered,
        "errors": dict(sorted(errors.items())),
        "error_count": sum(errors.values()),
        "wall_s": wall,
        "req_s": answered / wall if wall > 0 else 0.0,
        "rounds_req_s": [
            len(p["latencies_ms"]) / p["wall_s"] if p["wall_s"] > 0 else 0.0 for p in phases
        ],
        "cpu_ms_per_request": cpu_per_request_ms(cpu, requests),
        "client_cpu_ms_per_request": (
            sum(p.get("client_cpu_s", 0.0) for p in phases) * 1e3 / requests if requests else None
        ),
    }
    if latencies:
        row["latency_ms"] = {
            "p50": percentile(latencies, 50),
            "p90": percentile(latencies, 90),
            "p99": percentile(latencies, 99),
            "max": max(latencies),
            "mean": sum(latencies) / len(latencies),
        }
    else:
        row["latency_ms"] = None
    return row


def add_added_latency(rows: dict[str, dict[str, dict[str, Any]]], over: str = DIRECT) -> None:
    """Each row's p50 and p99 minus those of `over` (the direct path) at the same concurrency,
    as `added_ms`; the difference of percentiles, not a percentile of differences (the series
    are separate samples). Rows marked `"compare": False` (the hosted path, whose model is not
    the stand-in) get none."""
    base = rows.get(over, {})
    for name, by_c in rows.items():
        for c, row in by_c.items():
            ref = base.get(c)
            lat = row.get("latency_ms")
            if (
                name == over
                or not row.get("compare", True)
                or not ref
                or not ref.get("latency_ms")
                or not lat
            ):
                row["added_ms"] = None
                continue
            row["added_ms"] = {q: lat[q] - ref["latency_ms"][q] for q in ("p50", "p99")}


def _row(rows: Mapping[str, Any], name: str, c: int) -> dict[str, Any] | None:
    row = rows.get(name, {}).get(str(c))
    return row if row and row.get("latency_ms") else None


def byok_latency_verdict(rows: Mapping[str, Any], byok: str, database: str) -> Verdict:
    """Target 1: BYOK at concurrency 1 adds at most 4 ms at p50, and less than LiteLLM adds."""
    target = (
        f"BYOK ({database}) at c={LOW}: added p50 <= {BYOK_ADDED_P50_MAX_MS:g} ms and below "
        "LiteLLM's"
    )
    ours, theirs = _row(rows, byok, LOW), _row(rows, LITELLM, LOW)
    if not ours or not theirs or ours.get("added_ms") is None or theirs.get("added_ms") is None:
        return Verdict(f"g1-{database}", target, "not measured in this run", None)
    a, b = ours["added_ms"]["p50"], theirs["added_ms"]["p50"]
    met = a <= BYOK_ADDED_P50_MAX_MS and a < b and ours["error_count"] == 0
    measured = f"+{a:.2f} ms vs LiteLLM +{b:.2f} ms" + _errors_note(ours)
    return Verdict(f"g1-{database}", target, measured, met)


def byok_throughput_verdict(rows: Mapping[str, Any], byok: str, database: str) -> Verdict:
    """Target 2: BYOK at concurrency 64 serves at least 3x LiteLLM's requests per second with a
    lower p99 and no errors."""
    target = (
        f"BYOK ({database}) at c={HIGH}: req/s >= {BYOK_RPS_RATIO:g}x LiteLLM's, p99 below "
        "LiteLLM's, no errors"
    )
    ours, theirs = _row(rows, byok, HIGH), _row(rows, LITELLM, HIGH)
    if not ours or not theirs:
        return Verdict(f"g2-{database}", target, "not measured in this run", None)
    ratio = ours["req_s"] / theirs["req_s"] if theirs["req_s"] else float("inf")
    p99, their_p99 = ours["latency_ms"]["p99"], theirs["latency_ms"]["p99"]
    met = ratio >= BYOK_RPS_RATIO and p99 < their_p99 and ours["error_count"] == 0
    measured = (
        f"{ours['req_s']:.0f} vs {theirs['req_s']:.0f} req/s ({ratio:.2f}x), p99 {p99:.0f} vs "
        f"{their_p99:.0f} ms, {ours['error_count']} errors"
    )
    return Verdict(f"g2-{database}", target, measured, met)


def hosted_verdict(hosted: Mapping[str, Any] | None, database: str) -> Verdict:
    """Target 3: the hosted path's gateway (edge, auth, metering) adds at most 3 ms at p50 over
    calling the engine's gRPC Generate directly (`bench.gateway.measure`)."""
    target = (
        f"hosted ({database}) at c=1: the gateway adds <= {HOSTED_ADDED_P50_MAX_MS:g} ms p50 over "
        "the engine called directly"
    )
    if not hosted or hosted.get("added_p50_ms") is None:
        return Verdict(f"g3-{database}", target, "not measured in this run", None)
    added = hosted["added_p50_ms"]
    measured = (
        f"{added:+.2f} ms ({hosted['http_ms']['p50']:.1f} vs {hosted['direct_ms']['p50']:.1f} ms)"
    )
    return Verdict(f"g3-{database}", target, measured, added <= HOSTED_ADDED_P50_MAX_MS)


def _errors_note(row: Mapping[str, Any]) -> str:
    return f", {row['error_count']} errors" if row.get("error_count") else ""


def evaluate(results: Mapping[str, Any]) -> list[Verdict]:
    """Targets 1-3 for each database the run measured."""
    rows = results.get("rows", {})
    targets = results.get("targets", {})
    verdicts = []
    for database in results.get("databases", []):
        byok = next(
            (
                n
                for n, t in targets.items()
                if t.get("kind") == "byok" and t.get("database") == database
            ),
            f"byok-{database}",
        )
        verdicts.append(byok_latency_verdict(rows, byok, database))
        verdicts.append(byok_throughput_verdict(rows, byok, database))
        verdicts.append(hosted_verdict(results.get("hosted_gateway", {}).get(database), database))
    return verdicts
