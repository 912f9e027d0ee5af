"""The embedded rate limiter: sliding 60-second windows in one metering process's memory.

Right for one metering process (every edge shares it, no round trip to another store); several
metering replicas need `redis_limits.RedisLimiter` instead, since each process would keep its
own windows. Each method does its work without an await in between, which makes every
admission atomic with respect to the event loop.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from services.metering.ratelimit import (
    WINDOW_MS,
    Limiter,
    Limits,
    RateLimitState,
    Scope,
    WindowView,
    breaks,
    refusal,
    state,
)


class _Entry:
    """One admitted request in a window: when (ms), and how many tokens it counts for."""

    __slots__ = ("t", "n", "live")

    def __init__(self, t: int, n: int) -> None:
        self.t = t
        self.n = n
        self.live = True  # False once it left (or was taken out of) its window


class _Window:
    """One scope's last minute of requests and its requests in flight."""

    __slots__ = ("entries", "tokens", "inflight")

    def __init__(self) -> None:
        self.entries: deque[_Entry] = deque()
        self.tokens = 0
        self.inflight = 0

    def prune(self, now: int) -> None:
        horizon = now - WINDOW_MS
        entries = self.entries
        while entries and entries[0].t <= horizon:
            gone = entries.popleft()
            gone.live = False
            self.tokens -= gone.n

    def view(self, lim: Limits, tokens: int, now: int) -> WindowView:
        entries = self.entries
        used = len(entries)
        reset = max(0, entries[0].t + WINDOW_MS - now) if entries else 0
        rpm_wait = tpm_wait = 0
        if lim.rpm and used >= lim.rpm:
            # The request fits once enough of the oldest entries have left the window.
            rpm_wait = entries[used - lim.rpm].t + WINDOW_MS - now
        if lim.tpm and self.tokens + tokens > lim.tpm:
            tpm_wait = WINDOW_MS
            excess = self.tokens + tokens - lim.tpm
            for entry in entries:
                excess -= entry.n
                if excess <= 0:
                    tpm_wait = entry.t + WINDOW_MS - now
                    break
        return WindowView(used, self.tokens, self.inflight, reset, rpm_wait, tpm_wait)


@dataclass
class _Ticket:
    """What one admitted request holds in the windows until it settles or expires."""

    windows: list[_Window] = field(default_factory=list)
    entries: list[tuple[_Window, _Entry]] = field(default_factory=list)


class MemoryLimiter(Limiter):
    """The windows of every scope that has limits, keyed by (scope, scope_id).

    `clock` gives unix seconds (tests pass a fake one). Concurrency slots are held until the
    request settles or its reservation expires (the sweeper releases it), so `lease_ms` and
    `renew` have nothing to do here.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._windows: dict[tuple[str, str], _Window] = {}
        # Admitted and not yet settled, expired or undone: what each holds in the windows.
        self._tickets: dict[str, _Ticket] = {}

    def _now(self) -> int:
        return int(self._clock() * 1000)

    def _window(self, scope: str, scope_id: str) -> _Window:
        key = (scope, scope_id)
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = _Window()
        return window

    def _views(
        self, limits: Sequence[Limits], tokens: int, now: int
    ) -> tuple[list[_Window], list[WindowView]]:
        windows = [self._window(lim.scope, lim.scope_id) for lim in limits]
        for window in windows:
            window.prune(now)
        views = [w.view(lim, tokens, now) for lim, w in zip(limits, windows, strict=True)]
        return windows, views

    async def acquire(
        self,
        reservation_id: str,
        org_id: str,
        limits: Sequence[Limits],
        tokens: int,
        lease_ms: int,
    ) -> RateLimitState:
        active = [lim for lim in limits if lim.active]
        now = self._now()
        windows, views = self._views(active, tokens, now)
        if any(breaks(lim, view, tokens) for lim, view in zip(active, views, strict=True)):
            refused = refusal(active, views, tokens)
            assert refused is not None
            raise refused
        ticket = _Ticket()
        for window in windows:
            entry = _Entry(now, tokens)
            window.entries.append(entry)
            window.tokens += tokens
            window.inflight += 1
            ticket.windows.append(window)
            ticket.entries.append((window, entry))
        if windows:
            self._tickets[reservation_id] = ticket
        return state(active, [view.recorded(tokens) for view in views])

    async def state(self, org_id: str, limits: Sequence[Limits]) -> RateLimitState:
        active = [lim for lim in limits if lim.active]
        _, views = self._views(active, 0, self._now())
        return state(active, views)

    async def settle(
        self, reservation_id: str, org_id: str, scopes: Sequence[Scope], actual_tokens: int
    ) -> None:
        ticket = self._tickets.pop(reservation_id, None)
        if ticket is None:
            return
        for window, entry in ticket.entries:
            if entry.live:
                window.tokens += actual_tokens - entry.n
                entry.n = actual_tokens
        _leave(ticket)

    async def release(self, reservation_id: str, org_id: str, scopes: Sequence[Scope]) -> None:
        if (ticket := self._tickets.pop(reservation_id, None)) is not None:
            _leave(ticket)

    async def undo(self, reservation_id: str, org_id: str, scopes: Sequence[Scope]) -> None:
        ticket = self._tickets.pop(reservation_id, None)
        if ticket is None:
            return
        for window, entry in ticket.entries:
            if entry.live:
                window.entries.remove(entry)
                window.tokens -= entry.n
                entry.live = False
        _leave(ticket)

    async def renew(
        self, reservation_id: str, org_id: str, scopes: Sequence[Scope], lease_ms: int
    ) -> None:
        return None

    async def recover(self, inflight: Iterable[tuple[str, str, Sequence[Scope]]]) -> int:
        counted = 0
        for reservation_id, _org_id, scopes in inflight:
            if reservation_id in self._tickets:
                continue
            ticket = _Ticket()
            for scope, scope_id in scopes:
                window = self._window(scope, scope_id)
                window.inflight += 1
                ticket.windows.append(window)
            self._tickets[reservation_id] = ticket
            counted += 1
        return counted

    async def compact(self) -> None:
        now = self._now()
        for key, window in list(self._windows.items()):
            window.prune(now)
            if not window.entries and window.inflight == 0:
                del self._windows[key]

    def inflight(self, scope: str, scope_id: str) -> int:
        """Requests in flight in one scope (for tests)."""
        window = self._windows.get((scope, scope_id))
        return window.inflight if window else 0


def _leave(ticket: _Ticket) -> None:
    for window in ticket.windows:
        window.inflight = max(0, window.inflight - 1)
    ticket.windows.clear()
