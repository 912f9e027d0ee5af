"""What constrained decoding costs: per decode step at batch 1 and 16 (constrained against
plain, in one process on the engine's own scheduler), and aggregate throughput of 16 requests at
once with half of them constrained, beside 16 plain ones, through the running engine's gRPC
`Generate` (the edge does not pass response formats on yet).

Every request is greedy and runs exactly `max_tokens`: the constrained ones use a schema whose
smallest valid output is longer than that (an array of at least 500 short strings), so the
grammar never completes early and the two sides decode the same number of steps. The measuring
code runs here; the arithmetic (`step_summary`, `throughput_summary`) is pure, for the tests.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# An output the grammar keeps open for the whole run: it can only close after 500 items.
LONG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "lines": {
            "type": "array",
            "items": {"type": "string", "maxLength": 40},
            "minItems": 500,
        }
    },
    "required": ["lines"],
}
STEP_PROMPT = "Write a story about a river that runs through town. Answer in JSON."


def step_summary(timings: Sequence[Any]) -> dict[str, float]:
    """Medians over decode steps, in ms: the ONNX Runtime call, mask waiting, sampling, all."""

    def median_ms(values: list[float]) -> float:
        return statistics.median(values) * 1e3

    return {
        "steps": len(timings),
        "decode_ms": median_ms([t.decode_s for t in timings]),
        "mask_wait_ms": median_ms([t.mask_wait_s for t in timings]),
        "sample_ms": median_ms([t.sample_s for t in timings]),
        "step_ms": median_ms([t.decode_s + t.mask_wait_s + t.sample_s for t in timings]),
        # What is outside the ONNX Runtime call: masks not hidden, plus sampling.
        "host_ms": median_ms([t.mask_wait_s + t.sample_s for t in timings]),
    }


def compare_steps(plain: dict[str, float], constrained: dict[str, float]) -> dict[str, float]:
    """What constraining every row adds per step, from two step summaries: the host time
    outside the ONNX Runtime call (mask wait and sampling), also as a share of a plain step.
    The ONNX Runtime calls of the two runs are reported beside it rather than subtracted: on a
    shared machine their difference is mostly noise."""
    added = constrained["host_ms"] - plain["host_ms"]
    return {"added_host_ms": added, "added_step_pct": 100.0 * added / plain["step_ms"]}


def throughput_summary(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Completion tokens over first send to last finish, for one round released together."""
    start = min(r["sent"] for r in records)
    end = max(r["done"] for r in records)
    tokens = sum(r["completion_tokens"] for r in records)
    return {
        "requests": len(records),
        "constrained": sum(bool(r["constrained"]) for r in records),
        "completion_tokens": tokens,
        "wall_s": end - start,
        "tok_s": tokens / (end - start),
        "finish_reasons": sorted({r["finish_reason"] for r in records}),
    }


def _median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    ordered = sorted(rounds, key=lambda r: r["tok_s"])
    out = dict(ordered[len(ordered) // 2])
    out["rounds_tok_s"] = [r["tok_s"] for r in rounds]
    return out


# -- measuring (needs the model) -------------------------------------------------------------


def measure_steps(
    model_folder: Path, batches: Sequence[int], steps: int, rounds: int
) -> dict[str, Any]:
    """Per-step costs on the engine's scheduler in this process, plain and constrained runs
    alternating, `rounds` of each per batch size."""
    from services.engine.constraints import Grammars, json_grammar
    from services.engine.runtime import DecoderRuntime
    from services.engine.sampling import Sampler
    from services.engine.scheduler import Scheduler, StepTiming
    from services.engine.scheduler import Sequence as EngineSequence
    from services.engine.text import StopMatcher, TextCodec

    codec = TextCodec.from_folder(model_folder)
    runtime = DecoderRuntime(model_folder, max_batch=max(batches), max_len=1024)
    grammars = Grammars(codec.grammar_tokenizer(runtime.spec.eos_token_ids))
    grammar = json_grammar(LONG_SCHEMA, strict=True)
    prompt = codec.encode(codec.render_chat([("user", STEP_PROMPT)]))
    out: dict[str, Any] = {"steps_per_run": steps, "rounds": rounds}

    def run(batch: int, constrained: bool) -> tuple[list[StepTiming], float, int]:
        log: list[StepTiming] = []
        sched = Scheduler(runtime, codec.tokenizer, max_queue=batch, step_log=log)
        done = threading.Semaphore(0)
        reasons: list[str] = []

        def emit(event: Any) -> None:
            if event.finish_reason or event.error:
                reasons.append(event.finish_reason or repr(event.error))
                done.release()

        seqs = []
        for _ in range(batch):
            seq = EngineSequence(
                prompt,
                Sampler(0.0),
                steps,
                StopMatcher([]),
                codec.decoder(),
                emit,
                matcher=grammars.matcher(grammar, "bench") if constrained else None,
            )
            seqs.append(seq)
        sched.start()
        try:
            for seq in seqs:
                sched.submit(seq)
            for _ in seqs:
                if not done.acquire(timeout=600):
                    raise RuntimeError("a benchmark sequence did not finish")
        finally:
            sched.stop()
        if reasons != ["length"] * batch:
            raise RuntimeError(f"benchmark sequences ended early: {reasons}")
        fill = sched.masks.fill_s if sched.masks else 0.0
        fills = sched.masks.fills if sched.masks else 0
        # Steady state only: every row decoding (the first steps overlap the prefills).
        full = [t for t in log if t.rows == batch]
        return full, fill, fills

    run(max(batches), True)  # warm-up: ONNX Runtime's arena and the grammar cache
    for batch in batches:
        plain: list[Any] = []
        constrained: list[Any] = []
        fill_s, fills = 0.0, 0
        for _ in range(rounds):
            plain += run(batch, False)[0]
            log, fill, count = run(batch, True)
            constrained += log
            fill_s, fills = fill_s + fill, fills + count
        p, c = step_summary(plain), step_summary(constrained)
        out[str(batch)] = {
            "plain": p,
            "constrained": c,
            "mask_fill_us": 1e6 * fill_s / fills if fills else None,
            **compare_steps(p, c),
        }
    return out


async def _stream(stub: Any, request: Any, release: asyncio.Event) -> dict[str, Any]:
    await release.wait()
    sent = time.perf_counter()
    last = None
    async for msg in stub.Generate(request, timeout=600):
        last = msg
    if last is None:
        raise RuntimeError("an empty Generate stream")
    return {
        "sent": sent,
        "done": time.perf_counter(),
        "completion_tokens": last.usage.completion_tokens,
        "finish_reason": last.finish_reason,
        "constrained": request.HasField("response_format"),
    }


async def _round(engine_addr: str, model: str, prompt: str, max_tokens: int, mix: list[bool]):  # type: ignore[no-untyped-def]
    import grpc

    from services.pb.engine.v1 import engine_pb2, engine_pb2_grpc

    fmt = engine_pb2.ResponseFormat(
        type="json_schema",
        json_schema=engine_pb2.JsonSchemaFormat(schema=json.dumps(LONG_SCHEMA), strict=True),
    )
    async with grpc.aio.insecure_channel(engine_addr) as channel:
        stub = engine_pb2_grpc.EngineServiceStub(channel)
        release = asyncio.Event()
        requests = []
        for constrained in mix:
            req = engine_pb2.GenerateRequest(
                model=model,
                messages=engine_pb2.Messages(
                    messages=[engine_pb2.ChatMessage(role="user", content=prompt)]
                ),
                sampling=engine_pb2.SamplingParams(temperature=0),
                max_tokens=max_tokens,
            )
            if constrained:
                req.response_format.CopyFrom(fmt)
            requests.append(req)
        tasks = [asyncio.create_task(_stream(stub, r, release)) for r in requests]
        await asyncio.sleep(0)
        release.set()
        return list(await asyncio.gather(*tasks))


def measure_throughput(
    engine_addr: str, model: str, prompt: str, max_tokens: int, concurrency: int, rounds: int
) -> dict[str, Any]:
    """`concurrency` requests at once, all plain, then half constrained, alternating."""
    plain_mix = [False] * concurrency
    half_mix = [i % 2 == 1 for i in range(concurrency)]
    asyncio.run(_round(engine_addr, model, prompt, 8, half_mix))  # warm-up
    plain, half = [], []
    for _ in range(rounds):
        plain.append(
            throughput_summary(
                asyncio.run(_round(engine_addr, model, prompt, max_tokens, plain_mix))
            )
        )
        half.append(
            throughput_summary(
                asyncio.run(_round(engine_addr, model, prompt, max_tokens, half_mix))
            )
        )
    for rnd in (*plain, *half):
        if rnd["completion_tokens"] != max_tokens * concurrency:
            raise RuntimeError(f"requests ended before max_tokens: {rnd}")
    p, h = _median_round(plain), _median_round(half)
    return {"plain": p, "half_constrained": h, "ratio": h["tok_s"] / p["tok_s"]}


# -- the report --------------------------------------------------------------------------------


def render(section: dict[str, Any] | None) -> list[str]:
    """The PERFORMANCE.md lines for this part."""
    if not section:
        return ["_Constrained decoding was not measured in this run._"]
    lines = []
    steps = section.get("steps")
    if steps:
        lines += [
            f"Per decode step on the engine's scheduler in one process, greedy, medians over "
            f"{steps['rounds']} x {steps['steps_per_run']} steps of each kind, every row "
            "constrained or none. ONNX Runtime = the decode call, during which the masks are "
            "computed on a worker thread; host = waiting for masks after it plus sampling:",
            "",
            "| batch | ONNX Runtime, plain / constrained (ms) | host, plain / constrained (ms) "
            "| mask fill, all rows (us) | mask wait (ms) | added per step |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for batch in sorted((k for k in steps if k.isdigit()), key=int):
            row = steps[batch]
            p, c = row["plain"], row["constrained"]
            fill = row["mask_fill_us"]
            lines.append(
                f"| {batch} | {p['decode_ms']:.2f} / {c['decode_ms']:.2f} "
                f"| {p['host_ms']:.2f} / {c['host_ms']:.2f} "
                f"| {'-' if fill is None else f'{fill:.0f}'} | {c['mask_wait_ms']:.3f} "
                f"| {row['added_host_ms']:+.2f} ms ({row['added_step_pct']:+.1f}% of a step) |"
            )
        lines.append("")
    tp = section.get("throughput")
    if tp:
        p, h = tp["plain"], tp["half_constrained"]
        lines += [
            f"{p['requests']} requests at once to the engine's gRPC `Generate`, greedy, "
            f"{p['completion_tokens'] // p['requests']} tokens each (median round of "
            f"{len(p['rounds_tok_s'])}):",
            "",
            "| requests | constrained | aggregate tok/s | rounds (tok/s) |",
            "|---:|---:|---:|---|",
            f"| {p['requests']} | 0 | {p['tok_s']:.1f} "
            f"| {', '.join(f'{x:.0f}' for x in p['rounds_tok_s'])} |",
            f"| {h['requests']} | {h['constrained']} | {h['tok_s']:.1f} "
            f"| {', '.join(f'{x:.0f}' for x in h['rounds_tok_s'])} |",
            "",
            f"Half constrained runs at {tp['ratio']:.2f}x the all-plain throughput.",
        ]
    return lines
