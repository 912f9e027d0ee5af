"""Admit + Settle against a running metering, as unary calls and as messages on `Meter`
streams (`services.edge.meter.MeterStreams`), one request at a time, interleaved: the latency
of each call as the edge sees it, without HTTP, auth or a provider in the way.

    python -m bench.meter_calls 127.0.0.1:50052 [--pairs 500]

Run against a stack started with `sluice up` (tracing off, as the edge runs by default). Each
pair is a fresh request id in organization `bench-meter-calls`, settled "ok" with one token, so
the ledger gains two records per pair.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

import grpc

from services.edge.meter import MeterCalls, MeterStreams
from services.pb.metering.v1 import metering_pb2, metering_pb2_grpc

ORG = "bench-meter-calls"
WARMUP = 50


async def _pair(calls: MeterCalls) -> tuple[float, float]:
    request_id = uuid.uuid4().hex
    start = time.perf_counter()
    admitted = await calls.Admit(
        metering_pb2.AdmitRequest(
            org_id=ORG, key_id="k", model="m", upper_bound_tokens=10, request_id=request_id
        ),
        timeout=10,
    )
    admitted_at = time.perf_counter()
    await calls.Settle(
        metering_pb2.SettleRequest(
            reservation_id=admitted.reservation_id,
            org_id=ORG,
            key_id="k",
            model="m",
            completion_tokens=1,
            status="ok",
            request_id=request_id,
        ),
        timeout=10,
    )
    return (admitted_at - start) * 1e3, (time.perf_counter() - admitted_at) * 1e3


async def measure(addr: str, pairs: int) -> dict[str, dict[str, float]]:
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = metering_pb2_grpc.MeteringServiceStub(channel)
        streams = MeterStreams(stub)
        ways: dict[str, MeterCalls] = {"unary": stub, "stream": streams}
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
        try:
            for i in range(WARMUP + pairs):
                order = list(ways) if i % 2 == 0 else list(reversed(ways))
                for name in order:
                    took = await _pair(ways[name])
                    if i >= WARMUP:
                        times[name].append(took)
        finally:
            await streams.close()
    return {
        name: {
            "admit_p50_ms": statistics.median(a for a, _ in pairs_),
            "settle_p50_ms": statistics.median(s for _, s in pairs_),
        }
        for name, pairs_ in times.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.meter_calls", description=__doc__)
    parser.add_argument("addr", help="metering's gRPC address, e.g. 127.0.0.1:50052")
    parser.add_argument("--pairs", type=int, default=500, help="admit + settle pairs each way")
    args = parser.parse_args()
    for name, r in asyncio.run(measure(args.addr, args.pairs)).items():
        admit, settle = r["admit_p50_ms"], r["settle_p50_ms"]
        print(f"{name:6}  admit p50 {admit:.2f} ms  settle p50 {settle:.2f} ms")


if __name__ == "__main__":
    main()
