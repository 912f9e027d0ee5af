"""The background tasks that expire what outlived its time: reservations whose requests never
settled, and stored responses past their retention."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

MAX_INTERVAL_S = 30.0
STOP_GRACE_S = 5.0


def sweep_interval(reservation_ttl_s: float) -> float:
    """How often to sweep: often enough that an expired hold lingers at most a quarter TTL."""
    return min(MAX_INTERVAL_S, reservation_ttl_s / 4)


class Sweeper:
    """Calls `sweep` every `interval_s` seconds until stopped; a failed sweep is logged and the
    next one tries again."""

    def __init__(
        self,
        sweep: Callable[[], Awaitable[object]],
        interval_s: float,
        what: str = "reservations",
    ) -> None:
        self._sweep = sweep
        self._what = what
        self._interval_s = interval_s
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            loop = asyncio.get_running_loop()
            self._task = loop.create_task(self._run(), name=f"sweeper-{self._what}")

    async def stop(self) -> None:
        """Lets a sweep in progress finish (up to a grace period), then ends the task."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stop.set()
        # asyncio.timeout rather than wait_for: on Python 3.11 wait_for can swallow a cancel
        # that arrives as its inner await completes.
        try:
            async with asyncio.timeout(STOP_GRACE_S):
                await asyncio.shield(task)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval_s):
                    await self._stop.wait()
            if self._stop.is_set():
                return
            try:
                await self._sweep()
            except Exception:  # noqa: BLE001 - keep sweeping; the next round retries
                log.exception("sweeping expired %s failed", self._what)
