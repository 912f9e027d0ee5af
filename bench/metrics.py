"""The arithmetic of the report: percentiles, one stream's timings, and per-concurrency summaries.

Pure functions over recorded timestamps, so that tests can check every number the report prints
without running a model. Times are `time.perf_counter()` seconds; summaries report milliseconds
and tokens per second.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile {q} is outside 0..100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def spread(values: Sequence[float], *qs: float) -> dict[str, float]:
    """{"p50": ..., "p95": ...} for the given percentiles, plus the count and the mean."""
    out = {f"p{q:g}": percentile(values, q) for q in qs}
    out["mean"] = statistics.fmean(values)
    out["n"] = len(values)
    return out


@dataclass
class StreamRecord:
    """What the client saw of one streamed completion."""

    sent: float  # just before the request was written
    done: float = 0.0  # after the last byte ([DONE]) arrived
    chunk_times: list[float] = field(default_factory=list)  # arrival of each content chunk
    completion_tokens: int = 0  # from the usage chunk
    prompt_tokens: int = 0
    finish_reason: str = ""
    text: str = ""

    @property
    def ttft_s(self) -> float:
        """Time to the first content chunk."""
        if not self.chunk_times:
            raise ValueError("stream produced no content")
        return self.chunk_times[0] - self.sent

    @property
    def decode_tok_s(self) -> float | None:
        """Tokens after the first, over the time from the first to the last content chunk."""
        if len(self.chunk_times) < 2 or self.completion_tokens < 2:
            return None
        span = self.chunk_times[-1] - self.chunk_times[0]
        return (self.completion_tokens - 1) / span if span > 0 else None

    @property
    def gaps_s(self) -> list[float]:
        """Inter-token latency as the client sees it: gaps between consecutive content chunks."""
        return [b - a for a, b in zip(self.chunk_times, self.chunk_times[1:], strict=False)]

    def raw(self, origin: float) -> dict[str, Any]:
        """Times relative to `origin` (the round's first send), in ms, for results.json."""
        return {
            "sent_ms": round((self.sent - origin) * 1e3, 3),
            "done_ms": round((self.done - origin) * 1e3, 3),
            "chunk_ms": [round((t - origin) * 1e3, 2) for t in self.chunk_times],
            "completion_tokens": self.completion_tokens,
            "prompt_tokens": self.prompt_tokens,
            "finish_reason": self.finish_reason,
        }


def round_throughput(records: Sequence[StreamRecord]) -> dict[str, float]:
    """One round of requests released together: completion tokens over first send to last done.

    The wall time includes queueing and prefill, so this is what a client fleet gets.
    """
    start = min(r.sent for r in records)
    end = max(r.done for r in records)
    tokens = sum(r.completion_tokens for r in records)
    wall = end - start
    return {"completion_tokens": tokens, "wall_s": wall, "tok_s": tokens / wall}


def summarize_concurrency(concurrency: int, rounds: Sequence[Sequence[StreamRecord]]) -> dict:
    """The report's row for one concurrency, over one or more rounds of `concurrency` requests.

    Aggregate tok/s is the median over rounds; per-stream and latency figures pool all requests.
    """
    records = [r for rnd in rounds for r in rnd]
    per_round = [round_throughput(rnd) for rnd in rounds]
    decode = [d for r in records if (d := r.decode_tok_s) is not None]
    gaps = [g * 1e3 for r in records for g in r.gaps_s]
    return {
        "concurrency": concurrency,
        "rounds": len(rounds),
        "requests": len(records),
        "aggregate_tok_s": statistics.median(p["tok_s"] for p in per_round),
        "rounds_tok_s": [p["tok_s"] for p in per_round],
        "rounds_wall_s": [p["wall_s"] for p in per_round],
        "completion_tokens": sum(r.completion_tokens for r in records),
        "decode_tok_s_per_stream": statistics.median(decode) if decode else None,
        "ttft_ms": spread([r.ttft_s * 1e3 for r in records], 50, 95),
        "itl_ms": spread(gaps, 50, 95) if gaps else None,
        "finish_reasons": sorted({r.finish_reason for r in records}),
    }


def gateway_summary(http_ms: Sequence[float], direct_ms: Sequence[float]) -> dict:
    """Latency of the same call through the HTTP stack and straight to the engine, and the gap.

    The added cost is the difference of the percentiles (p50 via HTTP minus p50 direct, and so
    on), not a percentile of paired differences: the two series are separate samples.
    """
    http = spread(http_ms, 50, 99)
    direct = spread(direct_ms, 50, 99)
    return {
        "http_ms": http,
        "direct_ms": direct,
        "added_p50_ms": http["p50"] - direct["p50"],
        "added_p99_ms": http["p99"] - direct["p99"],
        "added_mean_ms": http["mean"] - direct["mean"],
    }


def outputs_agree(reference: str, texts: Sequence[str]) -> dict:
    """Whether every text equals the reference (greedy decoding of the same prompt)."""
    mismatched = [i for i, t in enumerate(texts) if t != reference]
    first_diff = None
    if mismatched:
        other = texts[mismatched[0]]
        first_diff = next(
            (i for i, (a, b) in enumerate(zip(reference, other, strict=False)) if a != b),
            min(len(reference), len(other)),
        )
    return {
        "compared": len(texts),
        "all_equal": not mismatched and bool(texts),
        "mismatched": mismatched,
        "first_difference_at_char": first_diff,
    }
