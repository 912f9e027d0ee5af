"""Keeping an open request's reservation: one task per admission that calls metering's
`RenewReservation` about every third of the lease while the request streams, and stops when
it settles.

Metering releases a reservation (its budget holds and its concurrency slots) that is neither
settled nor renewed within `SLUICE_RESERVATION_TTL_S`, so that the slots of a crashed edge free
themselves; a response streaming longer than that must renew. Renewing every third leaves two
more chances before the lease ends when metering does not answer (UNAVAILABLE: tried again
sooner). NOT_FOUND `reservation_not_open` means the reservation is settled or expired: stop.
Renewal also stops `max_s` after admission (the edge's request deadline): an admission that a bug
left unsettled then expires as if its edge had died, instead of being renewed forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import grpc

from services.pb.metering.v1 import metering_pb2, metering_pb2_grpc

log = logging.getLogger(__name__)

MIN_INTERVAL_S = 0.5
RETRY_S = 1.0
RENEW_TIMEOUT_S = 5.0


class Leases:
    """The renewal tasks of this edge's open admissions."""

    def __init__(
        self,
        metering: metering_pb2_grpc.MeteringServiceStub,
        ttl_s: float,
        *,
        max_s: float = float("inf"),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.metering = metering
        self.ttl_s = ttl_s
        self.max_s = max_s
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()

    def interval(self, expires_ms: int) -> float:
        """Seconds until the next renewal: a third of what is left of the lease by metering's
        expiry, read against this clock; the configured lifetime when the clocks disagree so
        much that the lease looks over or longer than it can be."""
        lease = expires_ms / 1000.0 - self._clock()
        if not 0 < lease <= self.ttl_s:
            lease = self.ttl_s
        return max(MIN_INTERVAL_S, lease / 3)

    def hold(self, reservation_id: str, expires_ms: int) -> asyncio.Task[None] | None:
        """Starts renewing `reservation_id`; cancel the task when the request settles."""
        if not reservation_id:
            return None
        task = asyncio.get_running_loop().create_task(
            self._renew(reservation_id, expires_ms), name=f"lease {reservation_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _renew(self, reservation_id: str, expires_ms: int) -> None:
        wait = self.interval(expires_ms)
        request = metering_pb2.RenewReservationRequest(reservation_id=reservation_id)
        until = time.monotonic() + self.max_s
        while True:
            await asyncio.sleep(wait)
            if time.monotonic() > until:
                log.warning(
                    "reservation %s open longer than %.0fs; not renewed", reservation_id, self.max_s
                )
                return
            try:
                resp = await self.metering.RenewReservation(request, timeout=RENEW_TIMEOUT_S)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    log.info("reservation %s is no longer open; not renewed", reservation_id)
                    return
                log.warning("renewing reservation %s failed (%s)", reservation_id, exc.code())
                wait = min(RETRY_S, self.interval(expires_ms))
                continue
            expires_ms = resp.expires_ms
            wait = self.interval(expires_ms)

    def __len__(self) -> int:
        return len(self._tasks)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
