"""The baseline to beat: onnxruntime-genai on the same exported folder, in this process.

Two shapes: `og.Generator` with a static batch (the same prompt replicated, exactly N new tokens,
greedy), and `og.Engine`, genai's own request scheduler, with several requests submitted at once.
Both run from a temporary copy of the model folder whose `genai_config.json` gives the decoder
session as many intra-op threads as our engine uses (ONNX Runtime's default there is one per
core; genai's own default is lower), so the comparison is between schedulers, not thread counts.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime_genai as og

from bench.metrics import spread

# The one file the copy rewrites; every other file is linked.
_CONFIG = "genai_config.json"


def prepare_model_copy(
    src: Path, dst: Path, *, threads: int, max_length: int, engine_batch: int
) -> Path:
    """A folder beside `src`'s files (symlinked) with an edited genai_config.json.

    `threads` goes to the decoder's session options; `max_length` caps the KV cache og.Engine
    allocates; `engine_batch` is og.Engine's static batch limit (`engine.static_batching`).
    """
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        link = dst / f.name
        if f.name != _CONFIG and not link.exists():
            link.symlink_to(f.resolve())
    config = json.loads((src / _CONFIG).read_text())
    config["model"]["decoder"].setdefault("session_options", {})["intra_op_num_threads"] = threads
    config["search"]["max_length"] = max_length
    config["engine"] = {"static_batching": {"max_batch_size": engine_batch}}
    (dst / _CONFIG).write_text(json.dumps(config, indent=2))
    return dst


class GenaiBaseline:
    """One loaded og.Model, used by both the static-batch and the og.Engine measurements."""

    def __init__(self, folder: Path, prompt_ids: list[int]) -> None:
        self.folder = folder
        self.model = og.Model(str(folder))
        self.prompt = np.asarray(prompt_ids, dtype=np.int32)
        self.config = json.loads((folder / _CONFIG).read_text())

    @property
    def threads(self) -> int:
        opts = self.config["model"]["decoder"].get("session_options", {})
        return int(opts.get("intra_op_num_threads", 0))

    def _static_batch(self, batch: int, new_tokens: int) -> tuple[dict[str, float], list[int]]:
        """One static batch: prefill (append_tokens), then exactly `new_tokens` greedy steps."""
        length = len(self.prompt) + new_tokens
        params = og.GeneratorParams(self.model)
        # min_length = max_length masks EOS until the end: every row generates new_tokens.
        params.set_search_options(
            batch_size=batch, max_length=length, min_length=length, do_sample=False
        )
        generator = og.Generator(self.model, params)
        t0 = time.perf_counter()
        generator.append_tokens(np.tile(self.prompt, (batch, 1)))
        t_prefill = time.perf_counter()
        generator.generate_next_token()  # samples the prefill's logits: the first token
        t_first = time.perf_counter()
        steps = 1
        while not generator.is_done():
            generator.generate_next_token()
            steps += 1
        t_end = time.perf_counter()
        first_row = [int(t) for t in generator.get_sequence(0)[len(self.prompt) :]]
        del generator
        timings = {"t0": t0, "prefill": t_prefill, "first": t_first, "end": t_end, "steps": steps}
        return timings, first_row

    def generator(self, batch: int, new_tokens: int, warmup_tokens: int = 8) -> dict[str, Any]:
        """og.Generator at a static batch size: prefill time, decode rate, rate incl. prefill."""
        self._static_batch(batch, warmup_tokens)
        t, tokens = self._static_batch(batch, new_tokens)
        steps = int(t["steps"])
        decode_s = t["end"] - t["first"]
        per_stream = (steps - 1) / decode_s if decode_s > 0 else None
        total = t["end"] - t["t0"]
        return {
            "batch": batch,
            "prompt_tokens": len(self.prompt),
            "new_tokens": steps,
            "prefill_ms": (t["prefill"] - t["t0"]) * 1e3,
            "ttft_ms": (t["first"] - t["t0"]) * 1e3,
            "decode_tok_s_per_stream": per_stream,
            "decode_tok_s_aggregate": per_stream * batch if per_stream else None,
            "tok_s_incl_prefill": batch * steps / total,
            "total_s": total,
            "tokens": tokens,
        }

    def engine(self, requests: int, new_tokens: int, warmup_tokens: int = 8) -> dict[str, Any]:
        """og.Engine with `requests` greedy requests submitted at once, `new_tokens` each."""
        engine = og.Engine(self.model)
        caps = engine.get_capabilities()
        buffer = engine.create_event_buffer(max(256, 4 * requests))
        self._engine_round(engine, buffer, requests, warmup_tokens)
        t0, first, done, generated, finish = self._engine_round(
            engine, buffer, requests, new_tokens
        )
        wall = max(done) - t0
        ttft = [(f - t0) * 1e3 for f in first]
        total = sum(generated)
        return {
            "requests": requests,
            "new_tokens": new_tokens,
            "capabilities": {
                "configured_max_batch_size": caps.configured_max_batch_size,
                "max_request_length": caps.max_request_length,
                "max_scheduled_tokens": caps.max_scheduled_tokens,
            },
            "completion_tokens": total,
            "wall_s": wall,
            "aggregate_tok_s": total / wall,
            "ttft_ms": spread(ttft, 50, 95),
            "ttft_ms_each": ttft,
            # Distinct first-token times show how og.Engine grouped the requests into batches.
            "batches_observed": len({round(f, 6) for f in first}),
            "finish_reasons": sorted(finish),
        }

    def _engine_round(
        self, engine: Any, buffer: Any, requests: int, new_tokens: int
    ) -> tuple[float, list[float], list[float], list[int], set[str]]:
        t0 = time.perf_counter()
        handles = []
        for _ in range(requests):
            request = engine.create_request()
            options = og.TurnOptions(request)
            options.set_max_generated_tokens(new_tokens)
            options.set_min_generated_tokens(new_tokens)
            options.set_do_sample(False)
            request.begin_turn(self.prompt, options)
            handles.append(request)
        index = {id(r): i for i, r in enumerate(handles)}
        first: dict[int, float] = {}
        done: dict[int, float] = {}
        generated = [0] * requests
        finish: set[str] = set()
        while engine.has_pending_requests():
            events = engine.run(buffer)
            now = time.perf_counter()
            for event in events:
                if event.flags & og.EngineEventFlags.FAILED:
                    raise RuntimeError(f"og.Engine failed: {event.error_code}")
                i = self._request_index(event.request, handles, index)
                if event.flags & og.EngineEventFlags.TOKEN:
                    first.setdefault(i, now)
                    generated[i] += 1
                if event.flags & og.EngineEventFlags.TURN_FINISHED:
                    done[i] = now
                    finish.add(event.finish_reason.name)
        for request in handles:
            request.close()
        if len(first) != requests or len(done) != requests:
            raise RuntimeError("og.Engine left requests without tokens or without an end")
        order = range(requests)
        return t0, [first[i] for i in order], [done[i] for i in order], generated, finish

    @staticmethod
    def _request_index(request: Any, handles: list[Any], index: dict[int, int]) -> int:
        # The binding may hand back a new wrapper for the same request: fall back to equality.
        found = index.get(id(request))
        if found is not None:
            return found
        for i, handle in enumerate(handles):
            if handle == request:
                return i
        raise RuntimeError("og.Engine reported an event for an unknown request")


def thread_count() -> int:
    """The intra-op thread count our engine gets by default (one per core)."""
    return os.cpu_count() or 1
