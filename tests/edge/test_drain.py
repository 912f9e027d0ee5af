"""The edge's drain: streams read through `Drain.interruptible` end with their own error at the
deadline (whether they were waiting or not), a client's cancel still cancels, and the server
turns the first signal into the drain, handing over to uvicorn after the delay."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator

import pytest
import uvicorn
from starlette.applications import Starlette

from services.edge.drain import BACKSTOP_MARGIN_S, Drain, DrainingServer, shutdown_error
from tests.edge.polling import until


class Stop(Exception):
    pass


async def slow(gate: asyncio.Event) -> AsyncIterator[int]:
    yield 1
    await gate.wait()
    yield 2


async def test_a_stream_waiting_at_the_deadline_raises_its_error() -> None:
    drain = Drain()
    stream = drain.interruptible(slow(asyncio.Event()), Stop)
    assert await anext(stream) == 1
    waiting = asyncio.create_task(anext(stream))
    await asyncio.sleep(0)
    drain.expire()
    with pytest.raises(Stop):
        await waiting
    assert not waiting.cancelled()


async def test_a_stream_busy_elsewhere_at_the_deadline_raises_on_its_next_read() -> None:
    drain = Drain()
    gate = asyncio.Event()
    gate.set()
    stream = drain.interruptible(slow(gate), Stop)
    assert await anext(stream) == 1
    drain.expire()
    with pytest.raises(Stop):
        await anext(stream)


async def test_streams_opened_after_the_deadline_end_at_once() -> None:
    drain = Drain()
    drain.expire()
    with pytest.raises(Stop):
        await anext(drain.interruptible(slow(asyncio.Event()), Stop))


async def test_a_client_cancel_still_cancels() -> None:
    drain = Drain()
    stream = drain.interruptible(slow(asyncio.Event()), Stop)
    await anext(stream)
    waiting = asyncio.create_task(anext(stream))
    await asyncio.sleep(0)
    waiting.cancel()  # the client went away
    drain.expire()  # and the deadline came in the same moment
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_streams_that_finish_are_not_touched() -> None:
    drain = Drain()
    gate = asyncio.Event()
    gate.set()
    assert [i async for i in drain.interruptible(slow(gate), Stop)] == [1, 2]
    drain.begin(0.0)
    assert drain.draining
    await asyncio.sleep(0.01)
    assert drain.expired


def test_the_shutdown_error_is_a_503_to_retry() -> None:
    err = shutdown_error()
    assert (err.status, err.code, err.headers["retry-after"]) == (503, "server_shutting_down", "1")


async def test_the_first_signal_drains_then_hands_over_to_uvicorn() -> None:
    drain = Drain()
    config = uvicorn.Config(Starlette(), lifespan="off")
    server = DrainingServer(config, drain, delay_s=0.05, grace_s=2.0)
    assert config.timeout_graceful_shutdown == int(2.0 + BACKSTOP_MARGIN_S + 0.999)
    server._loop = asyncio.get_running_loop()
    server.handle_exit(signal.SIGTERM, None)
    await asyncio.sleep(0)
    assert drain.draining and not drain.expired
    assert not server.should_exit  # still accepting during the delay
    await until(lambda: server.should_exit)
    assert not drain.expired  # the streams' deadline is later
    # A second signal is uvicorn's: a second Ctrl-C quits at once.
    server.handle_exit(signal.SIGINT, None)
    assert server.force_exit
