"""The drain of a gRPC service: NOT_SERVING first, then no new calls, then in-flight streams
finish within the grace period (and are cancelled past it); streaming handlers that write
through the context (health's Watch) pass the error boundary."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.grpc_server import RunningServer, start_server, stop_server

TICKS = 10


async def ticks(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    for i in range(TICKS):
        await asyncio.sleep(0.05)
        yield str(i).encode()


def _register(server: grpc.aio.Server) -> None:
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Clock", {"Ticks": grpc.unary_stream_rpc_method_handler(ticks)}
            ),
        )
    )


@pytest.fixture
async def running() -> AsyncIterator[RunningServer]:
    server = await start_server("127.0.0.1:0", _register, ["test.Clock"])
    yield server
    await server.server.stop(0)


async def _status(addr: str) -> int:
    async with grpc.aio.insecure_channel(addr) as channel:
        resp = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=2
        )
    return int(resp.status)


async def test_drain_reports_not_serving_refuses_new_calls_and_finishes_streams(
    running: RunningServer,
) -> None:
    addr = f"127.0.0.1:{running.port}"
    async with grpc.aio.insecure_channel(addr) as channel:
        stream = channel.unary_stream("/test.Clock/Ticks")(b"", timeout=30)
        first = await stream.read()
        assert first == b"0"
        draining = asyncio.create_task(stop_server(running, grace_s=10, delay_s=0.2))
        await asyncio.sleep(0.05)
        assert await _status(addr) == health_pb2.HealthCheckResponse.NOT_SERVING
        rest = []
        while (msg := await stream.read()) is not grpc.aio.EOF:
            rest.append(msg)
        assert [first, *rest] == [str(i).encode() for i in range(TICKS)]
        assert await stream.code() == grpc.StatusCode.OK
        await draining
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await channel.unary_stream("/test.Clock/Ticks")(b"", timeout=2).read()
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_streams_past_the_grace_period_are_cancelled(running: RunningServer) -> None:
    addr = f"127.0.0.1:{running.port}"
    async with grpc.aio.insecure_channel(addr) as channel:
        stream = channel.unary_stream("/test.Clock/Ticks")(b"", timeout=30)
        assert await stream.read() == b"0"
        await stop_server(running, grace_s=0.1)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            while await stream.read() is not grpc.aio.EOF:
                pass
        assert err.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)


async def test_health_watch_streams_changes(running: RunningServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(), timeout=10
        )
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        await running.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
