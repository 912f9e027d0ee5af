"""Getting every settlement to metering: a few quick attempts while the client waits, then the
outbox (services.edge.outbox), from which a background task delivers it once metering answers.

No acknowledged usage record is lost: a settlement metering did not take within the quick
attempts is committed to the outbox before the route lets the client see the end of its
response, and stays there until metering acknowledges it, across restarts of the edge.
Delivery is exactly once because settling is idempotent in metering: per reservation (a second
settle returns the first record), and, for records of requests refused before admission (no
reservation), per organization and request id. A settlement that arrives after its reservation
expired (`SLUICE_RESERVATION_TTL_S`) still charges the tokens and writes its record; see
docs/ARCHITECTURE.md for what the budget looks like meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import grpc
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from services.edge.meter import MeterCalls
from services.edge.outbox import Outbox
from services.pb.metering.v1 import metering_pb2

log = logging.getLogger(__name__)

QUICK_ATTEMPTS = 3
QUICK_BACKOFF_S = (0.1, 0.4)
SETTLE_TIMEOUT_S = 5.0
DELIVERY_BATCH = 100
RETRY_MIN_S = 0.5
RETRY_MAX_S = 5.0
# A kept settlement is looked at this often even without news (another process's rows adopted,
# a wake-up lost).
POLL_S = 30.0
# Answers that will not change however often the same settlement is sent.
PERMANENT = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)


def describe(exc: grpc.aio.AioRpcError | None) -> str:
    return "" if exc is None else f"{exc.code().name}: {exc.details() or ''}"[:500]


class Settlements:
    """Delivers settlements to metering (see the module docstring). Without an open outbox
    (`open()` not called, as in tests of routes alone) a settlement that fails its quick
    attempts is logged as lost."""

    def __init__(self, metering: MeterCalls) -> None:
        self.metering = metering
        self.outbox: Outbox | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def open(self, outbox: Outbox) -> None:
        """Opens `outbox` (blocking, once at start) and starts delivering what it holds."""
        outbox.open()
        self.outbox = outbox
        self._task = asyncio.get_running_loop().create_task(
            self._deliver_forever(), name="settlement-outbox"
        )

    async def settle(self, req: metering_pb2.SettleRequest) -> None:
        """Returns once metering took `req` or the outbox holds it durably."""
        failure: grpc.aio.AioRpcError | None = None
        for attempt in range(QUICK_ATTEMPTS):
            try:
                await self.metering.Settle(req, timeout=SETTLE_TIMEOUT_S)
                return
            except grpc.aio.AioRpcError as exc:
                failure = exc
                log.warning(
                    "settle %s failed (%s), attempt %d", req.request_id, exc.code(), attempt + 1
                )
                if exc.code() in PERMANENT:
                    break
            if attempt < len(QUICK_BACKOFF_S):
                await asyncio.sleep(QUICK_BACKOFF_S[attempt])
        await self.keep(req, failure)

    async def keep(
        self, req: metering_pb2.SettleRequest, failure: grpc.aio.AioRpcError | None
    ) -> None:
        if self.outbox is None:
            log.error("settle %s failed and no outbox is open: its record is lost", req.request_id)
            return
        dead = failure is not None and failure.code() in PERMANENT
        try:
            await self.outbox.keep(req, describe(failure), dead=dead)
        except Exception:  # noqa: BLE001 - nothing else can keep it
            log.exception("settle %s could not be kept: its record is lost", req.request_id)
            return
        if dead:
            log.error(
                "settle %s refused by metering (%s); kept as dead in %s",
                req.request_id,
                describe(failure),
                self.outbox.path,
            )
            return
        log.warning("settle %s kept in the outbox; delivered once metering answers", req.request_id)
        self._wake.set()

    async def deliver_pending(self) -> bool:
        """Delivers what the outbox holds, oldest first; False when metering stopped answering
        (the rest waits for the next round)."""
        outbox = self.outbox
        if outbox is None:
            return True
        while True:
            rows = await outbox.due(DELIVERY_BATCH)
            for row in rows:
                try:
                    await self.metering.Settle(row.request, timeout=SETTLE_TIMEOUT_S)
                except grpc.aio.AioRpcError as exc:
                    dead = exc.code() in PERMANENT
                    await outbox.failed(row.id, describe(exc), dead=dead)
                    if dead:
                        log.error(
                            "kept settle %s refused by metering (%s); left as dead",
                            row.request.request_id,
                            describe(exc),
                        )
                        continue
                    return False
                # Deleted only after metering acknowledged it: a crash between the two sends it
                # again, and metering returns the first record.
                await outbox.delivered(row.id)
                log.info("kept settle %s delivered", row.request.request_id)
            if len(rows) < DELIVERY_BATCH:
                return True

    async def _deliver_forever(self) -> None:
        delay = 0.0
        while True:
            try:
                delivered = await self.deliver_pending()
            except Exception:  # noqa: BLE001 - keep delivering; the next round retries
                log.exception("delivering kept settlements failed")
                delivered = False
            if delivered:
                delay = 0.0
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancel
                # that arrives as the event is set, and the task would never stop.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(POLL_S):
                        await self._wake.wait()
            else:
                # Metering is away: back off, whatever new settlements arrive meanwhile.
                delay = min(RETRY_MAX_S, max(RETRY_MIN_S, delay * 2))
                await asyncio.sleep(delay)
            self._wake.clear()

    async def close(self, flush_s: float) -> None:
        """Stops the background delivery, tries once more for up to `flush_s` seconds, and
        closes the outbox; what is left is delivered on the next start."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        outbox = self.outbox
        if outbox is None:
            return
        if outbox.pending:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(flush_s):
                    await self.deliver_pending()
        self.outbox = None
        if outbox.pending:
            log.warning(
                "%d settlement(s) stay in %s; delivered on the next start",
                outbox.pending,
                outbox.path,
            )
        await outbox.close()


class SettlementsCollector(Collector):
    """The outbox's size for /metrics."""

    def __init__(self, settlements: Settlements) -> None:
        self.settlements = settlements

    def collect(self) -> Iterator[Any]:
        kept = GaugeMetricFamily(
            "sluice_settlements_kept",
            "Settlements in this edge's outbox: pending (metering did not take them yet) and "
            "dead (refused by metering, kept for an operator).",
            labels=["state"],
        )
        outbox = self.settlements.outbox
        kept.add_metric(["pending"], outbox.pending if outbox else 0)
        kept.add_metric(["dead"], outbox.dead if outbox else 0)
        yield kept
