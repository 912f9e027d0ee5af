"""`python -m services.metering` as a process: it serves, stops cleanly on SIGTERM, keeps every
acknowledged record through kill -9, and recounts requests in flight when it starts again."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.pb.metering.v1 import metering_pb2, metering_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def metering(
    tmp_path: Path, port: int
) -> AsyncIterator[tuple[asyncio.subprocess.Process, metering_pb2_grpc.MeteringServiceStub]]:
    env = {
        **os.environ,
        "SLUICE_DATA_DIR": str(tmp_path),
        "SLUICE_METERING_ADDR": f"127.0.0.1:{port}",
        "SLUICE_RESERVATION_TTL_S": "600",
        "SLUICE_LOG_LEVEL": "WARNING",
    }
    env.pop("SLUICE_DATABASE_URL", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.metering", cwd=ROOT, env=env
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(300):
                try:
                    resp = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if resp.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.aio.AioRpcError:
                    pass
                assert proc.returncode is None, "metering exited on start"
                await asyncio.sleep(0.1)
            yield proc, metering_pb2_grpc.MeteringServiceStub(channel)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def admit_request(**extra: object) -> metering_pb2.AdmitRequest:
    return metering_pb2.AdmitRequest(
        org_id="o", key_id="k", model="m", upper_bound_tokens=10, **extra
    )


async def test_settled_usage_survives_kill_and_inflight_is_recounted(tmp_path: Path) -> None:
    port = free_port()
    quota = metering_pb2.Quota(max_concurrent=1)
    async with metering(tmp_path, port) as (proc, stub):
        done = await stub.Admit(admit_request())
        record = (
            await stub.Settle(
                metering_pb2.SettleRequest(
                    reservation_id=done.reservation_id,
                    org_id="o",
                    key_id="k",
                    model="m",
                    prompt_tokens=2,
                    completion_tokens=3,
                    status="ok",
                )  # fmt: skip
            )
        ).record
        held = await stub.Admit(admit_request(key_quota=quota))
        proc.send_signal(signal.SIGKILL)  # right after the acknowledgement
        await proc.wait()

    async with metering(tmp_path, port) as (proc, stub):
        listed = await stub.QueryUsage(metering_pb2.QueryUsageRequest())
        assert [r.id for r in listed.records] == [record.id]
        # The admitted, unsettled request still counts against the concurrency limit.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Admit(admit_request(key_quota=quota))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        await stub.Settle(
            metering_pb2.SettleRequest(
                reservation_id=held.reservation_id,
                org_id="o",
                key_id="k",
                model="m",
                status="ok",
            )  # fmt: skip
        )
        await stub.Admit(admit_request(key_quota=quota))

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
