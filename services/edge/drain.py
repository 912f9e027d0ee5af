"""The edge's drain on SIGTERM: not ready at once, no new connections after the drain delay,
streams in flight given the grace period, then ended by the edge with an error event in their
API's shape (and settled with what they delivered) rather than cut.

`DrainingServer` is uvicorn's server with the signal handled in two steps: the first SIGTERM or
SIGINT starts the `Drain` (readiness turns 503, streams get their deadline) and, after
`SLUICE_DRAIN_DELAY_S`, hands over to uvicorn's own graceful shutdown, which closes the
listening socket and waits for the connections (`timeout_graceful_shutdown`, a little beyond
the deadline, as a backstop). The delay is the gRPC services' rule too (services.common
.grpc_server): balancers that probe readiness move new requests elsewhere before the socket
closes, so that a client sees neither a refused connection nor a 503 for a request sent a moment
before the signal.

A stream reads its source (the engine's `Generate` call, a provider's events) through
`Drain.interruptible`, which costs nothing per message: at the deadline the drain cancels the
reading task only while it is suspended in that read, and the read raises the stream's own
"shutting down" failure instead, which the route already knows how to end a stream with.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import weakref
from collections.abc import AsyncIterator, Callable
from types import FrameType
from typing import Generic, TypeVar

import uvicorn

from services.edge.errors import APIError

log = logging.getLogger(__name__)

T = TypeVar("T")
# How long uvicorn waits past the streams' deadline before it cancels what still runs: time for
# the error events and the settlements that follow the deadline.
BACKSTOP_MARGIN_S = 5.0
SHUTTING_DOWN = "server_shutting_down"


def shutdown_error() -> APIError:
    """What a stream still running at the drain's deadline ends with."""
    return APIError(
        503,
        "The server is shutting down and ended this response at the end of its grace period; "
        "the output delivered so far is billed. Retry the request.",
        type="server_error",
        code=SHUTTING_DOWN,
        headers={"retry-after": "1"},
    )


class Interruptible(Generic[T]):
    """An async iterator that raises `error()` instead of waiting once its drain's deadline
    passed (see the module docstring)."""

    def __init__(self, source: AsyncIterator[T], error: Callable[[], BaseException]) -> None:
        self._source = source
        self._error = error
        self._task: asyncio.Task[object] | None = None
        self._reading = False
        self.interrupted = False

    def __aiter__(self) -> Interruptible[T]:
        return self

    async def __anext__(self) -> T:
        if self.interrupted:
            raise self._error()
        task = self._task = asyncio.current_task()
        self._reading = True
        try:
            return await self._source.__anext__()
        except asyncio.CancelledError:
            # Only the drain's own cancel becomes the error; a client that went away at the same
            # moment (another cancel of this task) still cancels it.
            if self.interrupted and task is not None and task.uncancel() == 0:
                raise self._error() from None
            raise
        finally:
            self._reading = False

    def interrupt(self) -> bool:
        """Ends the stream: now if it is waiting for its source (True), else at its next read."""
        if self.interrupted:
            return False
        self.interrupted = True
        if self._reading and self._task is not None:
            self._task.cancel()
            return True
        return False


class Drain:
    """The drain's state, shared by the server (which starts it) and the app (which reads it)."""

    def __init__(self) -> None:
        self.draining = False
        self.expired = False
        self._streams: weakref.WeakSet[Interruptible[object]] = weakref.WeakSet()

    def interruptible(
        self, source: AsyncIterator[T], error: Callable[[], BaseException]
    ) -> Interruptible[T]:
        """`source`, ended with `error()` at the deadline."""
        stream: Interruptible[T] = Interruptible(source, error)
        if self.expired:
            stream.interrupted = True
        else:
            self._streams.add(stream)  # type: ignore[arg-type]
        return stream

    def begin(self, deadline_s: float) -> None:
        """Starts draining: readiness fails now, streams are ended `deadline_s` from now."""
        if self.draining:
            return
        self.draining = True
        asyncio.get_running_loop().call_later(deadline_s, self.expire)

    def expire(self) -> None:
        """Ends every stream still open (the deadline)."""
        self.expired = True
        # Streams that already ended are in the set until collected; interrupting them is
        # harmless. Those waiting for output are ended now.
        ended = sum(stream.interrupt() for stream in list(self._streams))
        if ended:
            log.warning("drain deadline: ended %d stream(s) still running", ended)


class DrainingServer(uvicorn.Server):
    """uvicorn's server, draining on the first signal (see the module docstring)."""

    def __init__(self, config: uvicorn.Config, drain: Drain, delay_s: float, grace_s: float):
        config.timeout_graceful_shutdown = int(grace_s + BACKSTOP_MARGIN_S + 0.999)
        super().__init__(config)
        self.drain = drain
        self.delay_s = delay_s
        self.grace_s = grace_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._signalled = False

    async def serve(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)  # type: ignore[arg-type]

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._signalled or self._loop is None or self.should_exit:
            # A second signal goes to uvicorn: a second Ctrl-C quits at once.
            super().handle_exit(sig, frame)
            return
        self._signalled = True
        # A signal handler: hand the work to the loop.
        self._loop.call_soon_threadsafe(self._start_drain, sig, frame)

    def _start_drain(self, sig: int, frame: FrameType | None) -> None:
        log.info(
            "draining (%s): not ready; no new connections in %.1fs; streams end in %.1fs",
            signal.Signals(sig).name,
            self.delay_s,
            self.delay_s + self.grace_s,
        )
        self.drain.begin(self.delay_s + self.grace_s)
        assert self._loop is not None
        self._loop.call_later(self.delay_s, super().handle_exit, sig, frame)
