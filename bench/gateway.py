"""What the gateway costs: the same tiny request through HTTP (edge, auth, metering, engine)
and straight to the engine's gRPC `Generate`, sequentially and interleaved.

One output token and a short prompt keep the engine's share small and equal on both paths, so
the difference of the two latency distributions is the edge's parsing, the auth and metering
round trips, settlement, and the HTTP hop. Both clients keep their connection open, as a real
client would; calls alternate which path goes first so that drift hits both alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
import httpx

from bench.config import MODEL
from bench.metrics import gateway_summary
from services.pb.engine.v1 import engine_pb2, engine_pb2_grpc

CALL_TIMEOUT_S = 60.0


def _http_call(client: httpx.Client, prompt: str) -> Callable[[], None]:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 1,
        "temperature": 0,
    }

    def call() -> None:
        resp = client.post("/chat/completions", json=body)
        if resp.status_code != 200:
            raise RuntimeError(f"HTTP {resp.status_code}: {resp.text[:300]}")
        if resp.json()["usage"]["completion_tokens"] != 1:
            raise RuntimeError("the HTTP probe did not generate exactly one token")

    return call


def _grpc_call(stub: engine_pb2_grpc.EngineServiceStub, prompt: str) -> Callable[[], None]:
    request = engine_pb2.GenerateRequest(
        model=MODEL,
        messages=engine_pb2.Messages(
            messages=[engine_pb2.ChatMessage(role="user", content=prompt)]
        ),
        sampling=engine_pb2.SamplingParams(temperature=0),
        max_tokens=1,
    )

    def call() -> None:
        last = None
        for msg in stub.Generate(request, timeout=CALL_TIMEOUT_S):
            last = msg
        if last is None or last.usage.completion_tokens != 1:
            raise RuntimeError("the gRPC probe did not generate exactly one token")

    return call


def _timed(call: Callable[[], None]) -> float:
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1e3


def measure(
    base_url: str, key: str, engine_addr: str, prompt: str, samples: int, warmup: int
) -> dict:
    """`samples` sequential calls each way after `warmup` unrecorded pairs; latencies in ms."""
    http_ms: list[float] = []
    direct_ms: list[float] = []
    with (
        httpx.Client(
            base_url=base_url,
            headers={"Authorization": f"Bearer {key}"},
            timeout=CALL_TIMEOUT_S,
        ) as client,
        grpc.insecure_channel(engine_addr) as channel,
    ):
        via_http = _http_call(client, prompt)
        direct = _grpc_call(engine_pb2_grpc.EngineServiceStub(channel), prompt)
        for i in range(warmup + samples):
            pair = ((via_http, http_ms), (direct, direct_ms))
            for call, sink in pair if i % 2 == 0 else reversed(pair):
                elapsed = _timed(call)
                if i >= warmup:
                    sink.append(elapsed)
    summary = gateway_summary(http_ms, direct_ms)
    summary["samples"] = samples
    summary["raw_http_ms"] = [round(x, 3) for x in http_ms]
    summary["raw_direct_ms"] = [round(x, 3) for x in direct_ms]
    return summary
