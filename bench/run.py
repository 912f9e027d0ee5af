"""`make bench`: one run, one machine. Starts the stack, measures it at several concurrencies
alternating with the onnxruntime-genai baselines, measures the gateway's cost, evaluates the
targets, and writes results.json, the charts and the generated part of docs/PERFORMANCE.md.

    python -m bench.run            # the full run, written to docs/
    python -m bench.run --quick    # a short development run, written to a temporary folder
    python -m bench.run --constrained-only   # only the constrained-decoding part, merged into
                                             # the saved results.json and re-rendered
    python -m bench.run --gateway-only       # only the gateway benchmark (bench.gateway_load):
                                             # BYOK and hosted beside the LiteLLM proxy
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import byok, constrained, gateway, gateway_load, load
from bench.baseline_genai import GenaiBaseline, prepare_model_copy, thread_count
from bench.config import GATEWAY_PROMPT, MODEL, MODEL_FOLDER, PROMPT, ROOT, BenchConfig
from bench.machine import load_average, machine_info
from bench.metrics import outputs_agree, summarize_concurrency
from bench.report import render_section, write_performance_doc, write_results
from bench.stack import Stack, running_stack
from bench.targets import BATCH, evaluate

SETTLE_S = 1.0  # pause between phases: no request in flight, thread pools back to sleep


@dataclasses.dataclass(frozen=True)
class OutputPaths:
    results: Path
    images: Path
    performance: Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="concurrency 1 and 4, 32 new tokens, fewer gateway samples, genai batch 1 and 4",
    )
    parser.add_argument("--write", action="store_true", help="with --quick: write to docs/ anyway")
    parser.add_argument(
        "--out", type=Path, help="write PERFORMANCE.md, img/ and bench/ under this folder"
    )
    parser.add_argument(
        "--constrained-only",
        action="store_true",
        help="measure constrained decoding alone; the other sections come from results.json",
    )
    parser.add_argument(
        "--gateway-only",
        action="store_true",
        help="measure the gateway benchmark alone (gateway.json and its section)",
    )
    parser.add_argument(
        "--render",
        type=Path,
        metavar="RESULTS_JSON",
        help="measure nothing: re-render the report from a saved results.json",
    )
    return parser.parse_args(argv)


def output_paths(args: argparse.Namespace, quick: bool) -> OutputPaths:
    """docs/ for a full run (or --write); a fresh temporary folder for a quick one."""
    docs = ROOT / "docs"
    if args.out is not None:
        base = Path(args.out)
    elif quick and not args.write:
        base = Path(tempfile.mkdtemp(prefix="sluice-bench-out-"))
    else:
        base = docs
    if base != docs and (docs / "PERFORMANCE.md").exists():
        # Render into a copy, so that a trial run shows exactly what the real file would become.
        base.mkdir(parents=True, exist_ok=True)
        shutil.copy(docs / "PERFORMANCE.md", base / "PERFORMANCE.md")
    return OutputPaths(base / "bench" / "results.json", base / "img", base / "PERFORMANCE.md")


def prompt_ids(prompt: str) -> list[int]:
    """The prompt exactly as the engine tokenizes it: the model's chat template, then encode."""
    from services.engine.text import TextCodec

    codec = TextCodec.from_folder(MODEL_FOLDER)
    ids: list[int] = codec.encode(codec.render_chat([("user", prompt)]))
    return ids


def decode(ids: list[int]) -> str:
    from services.engine.text import TextCodec

    text: str = TextCodec.from_folder(MODEL_FOLDER).tokenizer.decode(ids)
    return text


def _say(message: str) -> None:
    print(f"bench: {message}", flush=True)


def _settle() -> None:
    time.sleep(SETTLE_S)


def _ours(stack: Stack, cfg: BenchConfig, c: int) -> tuple[dict, list, list[str]]:
    rounds = load.measure(
        stack.base_url,
        stack.key,
        c,
        PROMPT,
        cfg.max_tokens,
        rounds=cfg.single_stream_runs if c == 1 else 1,
    )
    summary = summarize_concurrency(c, rounds)
    raw = [[r.raw(min(x.sent for x in rnd)) for r in rnd] for rnd in rounds]
    texts = [r.text for rnd in rounds for r in rnd]
    short = [
        r.completion_tokens for rnd in rounds for r in rnd if r.completion_tokens < cfg.max_tokens
    ]
    if short:
        _say(f"WARNING: {len(short)} streams at C={c} ended early (EOS?): {short}")
    _say(
        f"ours C={c}: {summary['aggregate_tok_s']:.1f} tok/s aggregate, "
        f"{summary['decode_tok_s_per_stream']:.1f} tok/s per stream, TTFT p50/p95 "
        f"{summary['ttft_ms']['p50']:.0f}/{summary['ttft_ms']['p95']:.0f} ms, ITL p50/p95 "
        f"{summary['itl_ms']['p50']:.1f}/{summary['itl_ms']['p95']:.1f} ms"
    )
    return summary, raw, texts


def _generator(genai: GenaiBaseline, cfg: BenchConfig, batch: int) -> dict[str, Any]:
    g = genai.generator(batch, cfg.max_tokens)
    _say(
        f"og.Generator batch {batch}: prefill {g['prefill_ms']:.0f} ms, decode "
        f"{g['decode_tok_s_per_stream']:.1f} tok/s per stream, "
        f"{g['tok_s_incl_prefill']:.1f} tok/s incl. prefill"
    )
    return g


def _engine(genai: GenaiBaseline, cfg: BenchConfig) -> dict[str, Any]:
    e = genai.engine(cfg.genai_engine_requests, cfg.max_tokens)
    _say(
        f"og.Engine {e['requests']} requests: {e['aggregate_tok_s']:.1f} tok/s aggregate, TTFT "
        f"p50 {e['ttft_ms']['p50']:.0f} ms, {e['batches_observed']} batch(es) observed"
    )
    return e


def measure_all(cfg: BenchConfig, results: dict[str, Any], ids: list[int]) -> dict[str, list]:
    """Every measurement, into `results`; returns the streamed texts per concurrency."""
    texts: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="sluice-bench-") as tmp:
        folder = prepare_model_copy(
            MODEL_FOLDER,
            Path(tmp) / "genai-model",
            threads=thread_count(),
            max_length=cfg.genai_engine_max_length,
            engine_batch=cfg.genai_engine_requests,
        )
        genai = GenaiBaseline(folder, ids)
        results["genai_threads"] = genai.threads
        _say(f"starting the stack (SLUICE_ENGINE_MAX_BATCH={cfg.engine_max_batch})")
        with running_stack(Path(tmp) / "stack", max_batch=cfg.engine_max_batch) as stack:
            try:
                # Ours and the baseline alternate, so that drift of the machine hits both.
                for c in cfg.concurrencies:
                    summary, raw, texts[str(c)] = _ours(stack, cfg, c)
                    results["ours"][str(c)] = summary
                    results["raw"]["ours"][str(c)] = raw
                    _settle()
                    if c in cfg.genai_batches:
                        results["genai_generator"][str(c)] = _generator(genai, cfg, c)
                        _settle()
                    if c == cfg.genai_engine_requests:
                        results["genai_engine"] = _engine(genai, cfg)
                        _settle()
                for batch in cfg.genai_batches:
                    if str(batch) not in results["genai_generator"]:
                        results["genai_generator"][str(batch)] = _generator(genai, cfg, batch)
                if results["genai_engine"] is None:
                    results["genai_engine"] = _engine(genai, cfg)
                _say(f"gateway: {cfg.gateway_samples} calls each way")
                results["gateway"] = gateway.measure(
                    stack.base_url,
                    stack.key,
                    stack.engine_addr,
                    GATEWAY_PROMPT,
                    cfg.gateway_samples,
                    cfg.gateway_warmup,
                )
                g = results["gateway"]
                _say(
                    f"gateway: HTTP p50 {g['http_ms']['p50']:.2f} ms, direct p50 "
                    f"{g['direct_ms']['p50']:.2f} ms, added p50 {g['added_p50_ms']:+.2f} / "
                    f"p99 {g['added_p99_ms']:+.2f} ms"
                )
                _settle()
                results["constrained"]["throughput"] = _constrained_throughput(stack, cfg)
            except Exception:
                print(f"bench: the stack's last output:\n{stack.logs()}", file=sys.stderr)
                raise
        _settle()
        _say(f"bring-your-own-key: {cfg.gateway_samples} calls each way, before and after")
        results["byok"] = b = byok.measure(Path(tmp), cfg.gateway_samples, cfg.gateway_warmup)
        for name in ("before", "after"):
            if name in b:
                _say(
                    f"byok {name}: added p50 {b[name]['added_p50_ms']:+.2f} / p99 "
                    f"{b[name]['added_p99_ms']:+.2f} ms over the stand-in"
                )
    # In this process, with the stack stopped: nothing else on the cores.
    results["constrained"]["steps"] = _constrained_steps(cfg)
    return texts


def _constrained_throughput(stack: Stack, cfg: BenchConfig) -> dict[str, Any]:
    tp = constrained.measure_throughput(
        stack.engine_addr,
        MODEL,
        PROMPT,
        cfg.max_tokens,
        cfg.constrained_concurrency,
        cfg.constrained_rounds,
    )
    _say(
        f"constrained: {cfg.constrained_concurrency} at once, plain "
        f"{tp['plain']['tok_s']:.1f} tok/s, half constrained "
        f"{tp['half_constrained']['tok_s']:.1f} tok/s ({tp['ratio']:.2f}x)"
    )
    return tp


def _constrained_steps(cfg: BenchConfig) -> dict[str, Any]:
    steps = constrained.measure_steps(
        MODEL_FOLDER, cfg.constrained_batches, cfg.constrained_steps, cfg.constrained_rounds
    )
    for batch in cfg.constrained_batches:
        row = steps[str(batch)]
        _say(
            f"constrained step at batch {batch}: {row['plain']['step_ms']:.2f} ms plain, "
            f"{row['constrained']['step_ms']:.2f} ms constrained, added host "
            f"{row['added_host_ms']:+.2f} ms"
        )
    return steps


def measure_constrained_only(cfg: BenchConfig) -> dict[str, Any]:
    """The constrained-decoding section alone, with its own machine line."""
    section: dict[str, Any] = {"machine": machine_info(ROOT)}
    with (
        tempfile.TemporaryDirectory(prefix="sluice-bench-") as tmp,
        running_stack(Path(tmp) / "stack", max_batch=cfg.engine_max_batch) as stack,
    ):
        section["throughput"] = _constrained_throughput(stack, cfg)
    section["steps"] = _constrained_steps(cfg)
    section["machine"]["load_average_end"] = load_average()
    return section


def compare_outputs(results: dict[str, Any], texts: dict[str, list[str]]) -> None:
    """Greedy outputs under batching against the first single-stream output (target d)."""
    reference = texts["1"][0]
    measured = [int(c) for c in texts if int(c) > 1]
    at = BATCH if BATCH in measured else max(measured, default=None)
    out: dict[str, Any] = {"concurrency": at, "single_stream_text": reference}
    if at is not None:
        out.update(outputs_agree(reference, texts[str(at)]))
    out["single_stream_runs_equal"] = outputs_agree(reference, texts["1"])["all_equal"]
    gen1 = results["genai_generator"].get("1")
    if gen1 is not None:
        out["genai_batch1_equal"] = decode(gen1["tokens"]) == reference
    for g in results["genai_generator"].values():
        g.pop("tokens", None)
    results["outputs"] = out


def publish(results: dict[str, Any], paths: OutputPaths, charts: bool = True) -> None:
    """Targets, results.json, charts and the generated part of PERFORMANCE.md; prints verdicts.

    `charts=False` leaves the charts as they are (they draw only the sections a
    --constrained-only run does not measure)."""
    verdicts = evaluate(results)
    results["targets"] = [v.as_dict() for v in verdicts]
    write_results(paths.results, results)
    if charts:
        from bench.plots import write_charts  # matplotlib only once there is something to draw

        write_charts(results, paths.images)
    write_performance_doc(paths.performance, render_section(results, verdicts))
    print()
    for v in verdicts:
        print(f"  ({v.key}) {v.status():>12}  {v.target}: {v.measured}")
    print()
    _say(f"wrote {paths.results}, {paths.images}, {paths.performance}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render is not None:
        # Re-render from a saved run (after editing the report's code or prose): no measuring.
        saved = json.loads(args.render.read_text())
        paths = output_paths(args, bool(saved["config"]["quick"]))
        if "litellm_version" in saved:  # a gateway.json
            _publish_gateway(saved, paths)
        else:
            publish(saved, paths)
        return 0
    cfg = BenchConfig.quick_run() if args.quick else BenchConfig.full()
    paths = output_paths(args, cfg.quick)
    if args.gateway_only:
        _publish_gateway(gateway_load.run(cfg.quick), paths)
        return 0
    if args.constrained_only:
        saved_path = ROOT / "docs" / "bench" / "results.json"
        saved = json.loads(saved_path.read_text())
        saved["constrained"] = measure_constrained_only(cfg)
        saved["constrained"]["config"] = dataclasses.asdict(cfg)
        publish(saved, paths, charts=False)
        return 0
    started = time.perf_counter()
    results: dict[str, Any] = {
        "config": dataclasses.asdict(cfg),
        "machine": machine_info(ROOT),
        "ours": {},
        "genai_generator": {},
        "genai_engine": None,
        "gateway": None,
        "byok": None,
        "constrained": {},
        "raw": {"ours": {}},
    }
    load_now = results["machine"]["load_average_start"]
    if load_now and load_now[0] >= 1.0:
        _say(f"WARNING: load average {load_now[0]:.2f}: other work shares the cores")
    ids = prompt_ids(PROMPT)
    results["prompt"] = {"message": PROMPT, "prompt_tokens": len(ids)}
    _say(f"{'quick' if cfg.quick else 'full'} run; prompt of {len(ids)} tokens: {PROMPT!r}")

    texts = measure_all(cfg, results, ids)
    compare_outputs(results, texts)
    results["machine"]["load_average_end"] = load_average()
    results["duration_s"] = time.perf_counter() - started
    _say(f"measured in {results['duration_s']:.0f} s")
    publish(results, paths)
    _settle()
    _say("gateway benchmark: BYOK and hosted paths beside the LiteLLM proxy")
    _publish_gateway(gateway_load.run(cfg.quick), paths)
    return 0


def _publish_gateway(results: dict[str, Any], paths: OutputPaths) -> None:
    gateway_load.publish(results, paths.results.parent, paths.images, paths.performance)


if __name__ == "__main__":
    sys.exit(main())
