"""Admit and Settle on a few long-lived `Meter` streams instead of two unary calls per request.

A message on an open gRPC stream costs far less than a unary call in grpc.aio (no new HTTP/2
stream, no metadata, no per-call objects on either side; see docs/PERFORMANCE.md), and every
request makes these two calls on its latency path. `MeterStreams.Admit` and `.Settle` take and
return what the stub's methods do and fail the same way, with a `grpc.aio.AioRpcError` whose
code, details and trailers are what metering's error boundary would have given the unary call,
so the callers' error handling, transport retries included, is unchanged.

Calls take `LANES` streams in turn: with several metering replicas behind round-robin, each
stream is opened on the next one. A stream that broke (its replica died or drained) fails its
unanswered calls with UNAVAILABLE and no Sluice error code, a transport failure, which
`services.edge.control.with_transport_retries` sends again at once on a new stream (or as a
unary call, from then on, when the replica answered that it does not know `Meter`: an older
metering during a rolling upgrade). A stream is
replaced after `MAX_AGE_S`, so that the edge follows the replicas that DNS names (a connection
is re-resolved only when it ends, and an open stream would hold its connection forever). A
replaced stream is closed for writing and ends once its last calls are answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator

import grpc

from services.pb.metering.v1 import metering_pb2, metering_pb2_grpc

LANES = 4
MAX_AGE_S = 60.0


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _error(
    code: grpc.StatusCode, details: str, trailers: tuple[tuple[str, str], ...] = ()
) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailers), details)


def transport_error(details: str) -> grpc.aio.AioRpcError:
    """An UNAVAILABLE that no service chose: retried by `with_transport_retries`."""
    return _error(grpc.StatusCode.UNAVAILABLE, details)


def rpc_error(error: metering_pb2.CallError) -> grpc.aio.AioRpcError:
    """The error a unary call would have raised, from its `CallError`."""
    return _error(
        _CODES.get(error.code, grpc.StatusCode.UNKNOWN),
        error.message,
        tuple((t.key, t.value) for t in error.trailers),
    )


class _Lane:
    """One open `Meter` stream: calls written to it, replies matched to their calls by id."""

    def __init__(self, stub: metering_pb2_grpc.MeteringServiceStub) -> None:
        self.opened = time.monotonic()
        self.pending: dict[int, asyncio.Future[metering_pb2.MeterReply]] = {}
        self.broken = False
        # The replica does not know Meter (it runs an older version): unary calls from now on.
        self.unimplemented = False
        self._outgoing: asyncio.Queue[metering_pb2.MeterCall | None] = asyncio.Queue()
        self._closing = False
        self._call = stub.Meter(self._calls())
        self._reader = asyncio.create_task(self._read())

    def usable(self, now: float) -> bool:
        return not self.broken and not self._closing and now - self.opened < MAX_AGE_S

    def send(self, call: metering_pb2.MeterCall) -> asyncio.Future[metering_pb2.MeterReply]:
        future: asyncio.Future[metering_pb2.MeterReply] = asyncio.get_running_loop().create_future()
        self.pending[call.id] = future
        self._outgoing.put_nowait(call)
        return future

    def close(self) -> None:
        """No more calls: the stream ends once those sent are answered."""
        if not self._closing:
            self._closing = True
            self._outgoing.put_nowait(None)

    async def aclose(self) -> None:
        self.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader

    async def _calls(self) -> AsyncIterator[metering_pb2.MeterCall]:
        while (call := await self._outgoing.get()) is not None:
            yield call

    async def _read(self) -> None:
        error = transport_error("metering ended the stream")
        try:
            async for reply in self._call:
                future = self.pending.pop(reply.id, None)
                if future is not None and not future.done():
                    future.set_result(reply)
        except grpc.aio.AioRpcError as exc:
            self.unimplemented = exc.code() == grpc.StatusCode.UNIMPLEMENTED
            error = transport_error(f"the metering stream failed: {exc.code().name}")
        except asyncio.CancelledError:
            error = transport_error("the edge closed the metering stream")
            self._call.cancel()
            raise
        finally:
            self.broken = True
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(error)
            self.pending.clear()


class MeterStreams:
    """`Admit` and `Settle` with the stub's signatures, carried on `LANES` streams."""

    def __init__(self, stub: metering_pb2_grpc.MeteringServiceStub, lanes: int = LANES) -> None:
        self._stub = stub
        self._lanes: list[_Lane | None] = [None] * lanes
        self._turn = itertools.cycle(range(lanes))
        self._ids = itertools.count(1)
        self._retired: set[_Lane] = set()
        self.unary = False

    async def Admit(
        self,
        request: metering_pb2.AdmitRequest,
        timeout: float,  # noqa: ASYNC109 - the stub's signature
    ) -> metering_pb2.AdmitResponse:
        if self.unary:
            return await self._stub.Admit(request, timeout=timeout)
        reply = await self._call(metering_pb2.MeterCall(admit=request), timeout)
        return reply.admit

    async def Settle(
        self,
        request: metering_pb2.SettleRequest,
        timeout: float,  # noqa: ASYNC109 - the stub's signature
    ) -> metering_pb2.SettleResponse:
        if self.unary:
            return await self._stub.Settle(request, timeout=timeout)
        reply = await self._call(metering_pb2.MeterCall(settle=request), timeout)
        return reply.settle

    async def _call(
        self, call: metering_pb2.MeterCall, timeout_s: float
    ) -> metering_pb2.MeterReply:
        call.id = next(self._ids)
        lane = self._lane()
        future = lane.send(call)
        try:
            reply = await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            raise _error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        except grpc.aio.AioRpcError:
            # Retried by the caller: on unary calls if the replica does not know Meter.
            self.unary = self.unary or lane.unimplemented
            raise
        finally:
            lane.pending.pop(call.id, None)
        if reply.HasField("error"):
            raise rpc_error(reply.error)
        return reply

    def _lane(self) -> _Lane:
        i = next(self._turn)
        lane = self._lanes[i]
        if lane is not None and lane.usable(time.monotonic()):
            return lane
        if lane is not None:
            self._retire(lane)
        lane = self._lanes[i] = _Lane(self._stub)
        return lane

    def _retire(self, lane: _Lane) -> None:
        self.unary = self.unary or lane.unimplemented
        lane.close()
        # Kept until it has ended (its last calls answered), then forgotten.
        self._retired = {r for r in (*self._retired, lane) if not r.broken}

    async def close(self) -> None:
        lanes = [lane for lane in (*self._lanes, *self._retired) if lane is not None]
        self._lanes = [None] * len(self._lanes)
        self._retired = set()
        for lane in lanes:
            await lane.aclose()


# What carries a request's Admit and Settle: these streams, or the stub's unary calls.
MeterCalls = MeterStreams | metering_pb2_grpc.MeteringServiceStub
