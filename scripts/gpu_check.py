"""Checks the engine on a GPU host: the CUDA provider really runs the model, greedy output agrees
with the CPU, a prefill copied slot to slot decodes like the original, and single-stream and
batch throughput and time to first token.

Run through `scripts/gpu_check.sh`, which installs onnxruntime-gpu first. `--cpu-only` runs the
same code on the CPU provider with small sizes; the test suite runs that half.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.engine.runtime import DecoderRuntime  # noqa: E402
from services.engine.sampling import Sampler  # noqa: E402
from services.engine.scheduler import Event, Scheduler, Sequence  # noqa: E402
from services.engine.text import StopMatcher, TextCodec  # noqa: E402

QUESTION = "What is the capital of France?"
STORY = "Tell me a long story about a dragon who learns to fly over the mountains."


def greedy(rt: DecoderRuntime, prompt: list[int], n: int) -> list[int]:
    logits = rt.prefill(0, [np.asarray(prompt, dtype=np.int64)])
    out = [int(np.argmax(logits[0]))]
    length = len(prompt)
    for _ in range(n - 1):
        logits = rt.decode(np.array([out[-1]]), np.array([length]))
        out.append(int(np.argmax(logits[0])))
        length += 1
    return out


def copied_prefill_agrees(rt: DecoderRuntime, prompt: list[int], steps: int) -> bool:
    """Prefill slot 0, copy its KV to the last slot on the device (`copy_slot`, the path of
    n > 1), then decode both rows together: their logits must be equal at every step."""
    last = rt.max_batch - 1
    token = int(np.argmax(rt.prefill(0, [np.asarray(prompt, dtype=np.int64)])[0]))
    rt.copy_slot(0, last, len(prompt))
    lengths = np.zeros(rt.max_batch, dtype=np.int64)
    lengths[[0, last]] = len(prompt)
    for _ in range(steps):
        tokens = np.zeros(rt.max_batch, dtype=np.int64)
        tokens[[0, last]] = token
        logits = rt.decode(tokens, lengths)
        if not np.array_equal(logits[0], logits[last]):
            return False
        token = int(np.argmax(logits[0]))
        lengths[[0, last]] += 1
    return True


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def run_batch(
    sched: Scheduler, codec: TextCodec, prompt: list[int], count: int, tokens: int
) -> dict[str, float]:
    done = threading.Event()
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    produced: dict[int, int] = {}
    start = time.perf_counter()

    def emitter(i: int):  # type: ignore[no-untyped-def]
        def emit(event: Event) -> None:
            now = time.perf_counter()
            if event.error is not None:
                raise event.error
            first.setdefault(i, now)
            last[i] = now
            if event.finish_reason:
                produced[i] = event.completion_tokens
                if len(produced) == count:
                    done.set()

        return emit

    for i in range(count):
        seq = Sequence(
            list(prompt), Sampler(0.0), tokens, StopMatcher([]), codec.decoder(), emitter(i)
        )
        sched.submit(seq)
    if not done.wait(600):
        raise SystemExit("batch did not finish")
    wall = max(last.values()) - start
    ttfts = sorted(first[i] - start for i in range(count))
    decode = [(produced[i] - 1) / (last[i] - first[i]) for i in range(count) if last[i] > first[i]]
    return {
        "requests": count,
        "tokens": sum(produced.values()),
        "aggregate_tok_s": sum(produced.values()) / wall,
        "per_stream_decode_tok_s": statistics.median(decode) if decode else 0.0,
        "ttft_p50_ms": 1000 * ttfts[len(ttfts) // 2],
        "ttft_p95_ms": 1000 * ttfts[min(len(ttfts) - 1, int(0.95 * len(ttfts)))],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models" / "smollm2-135m-instruct")
    parser.add_argument("--cpu-only", action="store_true")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--batches", default="32,64")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result: dict[str, object] = {
        "onnxruntime": ort.__version__,
        "available_providers": ort.get_available_providers(),
    }
    cpu_folder = args.model_dir / "cpu-int4"
    if args.cpu_only:
        folder, providers, strict = cpu_folder, ["CPUExecutionProvider"], False
    else:
        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()  # CUDA and cuDNN from the host's pip packages, if any
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            print(json.dumps(result, indent=2))
            raise SystemExit("FAIL: CUDAExecutionProvider is not available")
        folder = next(
            (
                args.model_dir / v
                for v in ("cuda-fp16", "cuda-int4")
                if (args.model_dir / v / "genai_config.json").exists()
            ),
            None,
        )
        if folder is None:
            raise SystemExit(f"FAIL: no CUDA export under {args.model_dir}")
        providers, strict = ["CUDAExecutionProvider"], True
    batches = [int(b) for b in args.batches.split(",") if b]
    codec = TextCodec.from_folder(folder)
    # strict: session creation fails if any node would fall back to the CPU.
    rt = DecoderRuntime(
        folder, max_batch=max(batches), max_len=1024, providers=providers, strict_provider=strict
    )
    result.update(variant=folder.name, provider=rt.provider, device=rt.device)
    if not args.cpu_only and rt.provider != "CUDAExecutionProvider":
        raise SystemExit(f"FAIL: session runs on {rt.provider}")

    question = codec.encode(codec.render_chat([("user", QUESTION)]))
    here = greedy(rt, question, 24)
    reference = DecoderRuntime(
        folder, max_batch=1, max_len=1024, providers=["CPUExecutionProvider"]
    )
    same_files_cpu = greedy(reference, question, 24)
    int4_cpu = greedy(
        DecoderRuntime(cpu_folder, max_batch=1, max_len=1024, providers=["CPUExecutionProvider"]),
        question,
        24,
    )
    result["greedy"] = {
        "text": codec.tokenizer.decode(here),
        "same_variant_on_cpu_prefix": common_prefix(here, same_files_cpu),
        "cpu_int4_text": codec.tokenizer.decode(int4_cpu),
        "cpu_int4_prefix": common_prefix(here, int4_cpu),
    }
    result["copied_prefill_agrees"] = copied_prefill_agrees(rt, question, 8)
    rt.warmup(512)
    sched = Scheduler(rt, codec.tokenizer, max_queue=4 * max(batches), prefill_tokens=512)
    sched.start()
    try:
        story = codec.encode(codec.render_chat([("user", STORY)]))
        result["prompt_tokens"] = len(story)
        result["single_stream"] = run_batch(sched, codec, story, 1, args.tokens)
        for b in batches:
            result[f"batch_{b}"] = run_batch(sched, codec, story, b, args.tokens)
    finally:
        sched.stop()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
    # Same files, two providers: fp16 rounding may split a near-tie late, never at the start.
    if result["greedy"]["same_variant_on_cpu_prefix"] < 8:  # type: ignore[index]
        print("FAIL: greedy output disagrees with the CPU provider on the same files")
        return 1
    if not result["copied_prefill_agrees"]:
        print("FAIL: a prefill copied slot to slot decodes differently from the original")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
