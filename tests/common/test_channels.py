"""Channels to replicas: targets from address settings, round robin over the replicas that are
SERVING, and a draining replica left out of new calls."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2

from services.common.channels import aio_channel, sync_channel, target
from services.common.grpc_server import RunningServer, start_server, stop_server


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        ("127.0.0.1:50052", "127.0.0.1:50052"),
        ("metering:50052", "metering:50052"),
        ("dns:///metering.sluice.svc:50052", "dns:///metering.sluice.svc:50052"),
        ("10.0.0.5:50052, 10.0.0.6:50052", "ipv4:10.0.0.5:50052,10.0.0.6:50052"),
        ("[fd00::5]:50052,[fd00::6]:50052", "ipv6:[fd00::5]:50052,[fd00::6]:50052"),
    ],
)
def test_targets(addr: str, expected: str) -> None:
    assert target(addr) == expected


@pytest.mark.parametrize(
    ("addr", "message"),
    [
        ("", "empty"),
        ("engine-a:50053,engine-b:50053", "use dns:///engine-a:50053"),
        ("10.0.0.5:50052,[fd00::6]:50052", "mixes IPv4 and IPv6"),
        ("10.0.0.5,10.0.0.6:1", "has no port"),
        ("dns:///a:1,10.0.0.6:1", "host:port entries only"),
    ],
)
def test_bad_lists_say_why(addr: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        target(addr)


def _who(port: int) -> grpc.GenericRpcHandler:
    async def who(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return str(port).encode()

    return grpc.method_handlers_generic_handler(
        "test.Replica", {"Who": grpc.unary_unary_rpc_method_handler(who)}
    )


@pytest.fixture
async def replicas() -> AsyncIterator[list[RunningServer]]:
    servers = []
    for _ in range(2):
        # The port is known once bound; the handler added after start answers with it.
        running = await start_server("127.0.0.1:0", lambda server: None, ["test.Replica"])
        running.server.add_generic_rpc_handlers((_who(running.port),))
        servers.append(running)
    yield servers
    for running in servers:
        await stop_server(running, grace_s=0)


async def _calls(channel: grpc.aio.Channel, n: int) -> collections.Counter[str]:
    who = channel.unary_unary("/test.Replica/Who")
    seen: collections.Counter[str] = collections.Counter()
    for _ in range(n):
        seen[(await who(b"", timeout=5, wait_for_ready=True)).decode()] += 1
    return seen


async def test_calls_go_round_robin_and_skip_a_replica_not_serving(
    replicas: list[RunningServer],
) -> None:
    a, b = replicas
    addr = f"127.0.0.1:{a.port},127.0.0.1:{b.port}"
    async with aio_channel(addr) as channel:
        # Until both connections are up, the one that is takes every call.
        for _ in range(100):
            if len(await _calls(channel, 2)) == 2:
                break
            await asyncio.sleep(0.05)
        assert await _calls(channel, 20) == {str(a.port): 10, str(b.port): 10}

        await b.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        # The channel watches health; it stops picking b once the change reaches it.
        for _ in range(100):
            if set(await _calls(channel, 4)) == {str(a.port)}:
                break
            await asyncio.sleep(0.05)
        assert await _calls(channel, 10) == {str(a.port): 10}

        await b.health.set("", health_pb2.HealthCheckResponse.SERVING)
        for _ in range(100):
            if str(b.port) in await _calls(channel, 4):
                break
            await asyncio.sleep(0.05)
        assert set(await _calls(channel, 10)) == {str(a.port), str(b.port)}


async def test_a_draining_replica_gets_no_new_calls(replicas: list[RunningServer]) -> None:
    a, b = replicas
    async with aio_channel(f"127.0.0.1:{a.port},127.0.0.1:{b.port}") as channel:
        await _calls(channel, 4)
        stopping = asyncio.create_task(stop_server(b, grace_s=1, delay_s=1))
        await asyncio.sleep(0.5)  # NOT_SERVING, not yet refusing
        assert await _calls(channel, 10) == {str(a.port): 10}
        await stopping


async def test_the_blocking_channel_balances_too(replicas: list[RunningServer]) -> None:
    a, b = replicas

    def calls() -> set[str]:
        with sync_channel(f"127.0.0.1:{a.port},127.0.0.1:{b.port}") as channel:
            who = channel.unary_unary("/test.Replica/Who")
            seen: set[str] = set()
            for _ in range(500):  # the second connection comes up within a few calls
                seen.add(who(b"", timeout=5, wait_for_ready=True).decode())
                if len(seen) == 2:
                    break
            return seen

    # On a thread: the servers answer on this test's event loop.
    assert await asyncio.to_thread(calls) == {str(a.port), str(b.port)}
