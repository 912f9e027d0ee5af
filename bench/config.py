"""What one benchmark run measures: the workload (prompt, lengths, concurrencies) in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"
MODEL_FOLDER = ROOT / "models" / MODEL / "cpu-int4"

# Rendered with the model's chat template (its default system prompt included) this is 41 tokens,
# and greedy decoding loops on it without EOS for well over 200 tokens, so every request
# generates exactly max_tokens and the runs stay comparable.
PROMPT = "Write a story about a river that runs through town."
# The gateway probe: a short prompt and one output token, so the engine's share stays small.
GATEWAY_PROMPT = "Say hi."


@dataclass(frozen=True)
class BenchConfig:
    """One run's shape. `full()` is what `make bench` runs; `quick()` is for development."""

    quick: bool
    concurrencies: tuple[int, ...]
    single_stream_runs: int  # sequential repetitions at concurrency 1
    max_tokens: int
    genai_batches: tuple[int, ...]  # static batch sizes for the og.Generator baseline
    genai_engine_requests: int  # requests submitted at once to og.Engine
    genai_engine_max_length: int  # search.max_length in the og.Engine's model copy
    gateway_samples: int  # sequential calls each way
    gateway_warmup: int
    engine_max_batch: int  # SLUICE_ENGINE_MAX_BATCH for the stack under test
    constrained_batches: tuple[int, ...]  # batch sizes of the per-step constrained costs
    constrained_steps: int  # decode steps per run of those
    constrained_rounds: int  # plain/constrained runs (per-step) and rounds (throughput) each
    constrained_concurrency: int  # requests at once, half of them constrained

    @classmethod
    def full(cls) -> BenchConfig:
        return cls(
            quick=False,
            concurrencies=(1, 4, 16, 32),
            single_stream_runs=5,
            max_tokens=200,
            genai_batches=(1, 4, 16),
            genai_engine_requests=16,
            genai_engine_max_length=512,
            gateway_samples=200,
            gateway_warmup=10,
            engine_max_batch=32,
            constrained_batches=(1, 16),
            constrained_steps=32,
            constrained_rounds=6,
            constrained_concurrency=16,
        )

    @classmethod
    def quick_run(cls) -> BenchConfig:
        return cls(
            quick=True,
            concurrencies=(1, 4),
            single_stream_runs=2,
            max_tokens=32,
            genai_batches=(1, 4),
            genai_engine_requests=4,
            genai_engine_max_length=512,
            gateway_samples=30,
            gateway_warmup=5,
            engine_max_batch=32,
            constrained_batches=(1, 16),
            constrained_steps=24,
            constrained_rounds=1,
            constrained_concurrency=16,
        )
