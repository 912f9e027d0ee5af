"""Requests and tokens per minute and concurrent requests, in sliding 60-second windows in memory.

One metering process owns these windows for every edge, so they need no database round trip.
Every method is synchronous: checking all windows and recording the request happen without an
await in between, which makes each admission atomic with respect to the event loop.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from services.common.ratelimits import format_reset, rate_limit_headers
from services.metering.refusals import Refusal

WINDOW_S = 60.0
# Nobody can say when an in-flight request will finish; a second is a polite first retry.
CONCURRENCY_RETRY_S = 1


@dataclass(frozen=True)
class Limits:
    """One scope's limits (0 = none of that kind) and how refusals name it."""

    scope: str  # "key", "project", "org" or "plan" (an organization's plan ceiling)
    scope_id: str  # the key, project or organization id (the organization's, for a plan)
    label: str  # e.g. "key key_ab12", "plan free of organization org_1"
    rpm: int = 0
    tpm: int = 0
    max_concurrent: int = 0

    @property
    def active(self) -> bool:
        return bool(self.rpm or self.tpm or self.max_concurrent)


@dataclass(frozen=True)
class RateLimitState:
    """OpenAI's x-ratelimit-* values for the tightest applicable limit; 0 limits = none apply."""

    limit_requests: int = 0
    remaining_requests: int = 0
    reset_requests_ms: int = 0
    limit_tokens: int = 0
    remaining_tokens: int = 0
    reset_tokens_ms: int = 0

    def headers(self) -> dict[str, str]:
        return rate_limit_headers(
            self.limit_requests,
            self.remaining_requests,
            self.reset_requests_ms,
            self.limit_tokens,
            self.remaining_tokens,
            self.reset_tokens_ms,
        )


class _Entry:
    """One admitted request in a window: when, and how many tokens it counts for."""

    __slots__ = ("t", "n", "live")

    def __init__(self, t: float, n: int) -> None:
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

    def prune(self, now: float) -> None:
        horizon = now - WINDOW_S
        entries = self.entries
        while entries and entries[0].t <= horizon:
            gone = entries.popleft()
            gone.live = False
            self.tokens -= gone.n

    def reset_ms(self, now: float) -> int:
        """Milliseconds until the oldest entry leaves the window (0 when it is empty)."""
        if not self.entries:
            return 0
        return max(0, math.ceil((self.entries[0].t + WINDOW_S - now) * 1000))


@dataclass
class Ticket:
    """What one admitted request holds in the windows until it settles or expires."""

    windows: list[_Window] = field(default_factory=list)
    entries: list[tuple[_Window, _Entry]] = field(default_factory=list)


@dataclass(frozen=True)
class _Violation:
    message: str
    retry_after: int


class RateLimiter:
    """The windows of every scope that has limits, keyed by (scope, scope_id)."""

    def __init__(self) -> None:
        self._windows: dict[tuple[str, str], _Window] = {}

    def _window(self, scope: str, scope_id: str) -> _Window:
        key = (scope, scope_id)
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = _Window()
        return window

    def acquire(
        self, limits: Sequence[Limits], tokens: int, now: float
    ) -> tuple[Ticket, RateLimitState]:
        """Checks every scope's limits and, when all allow it, records the request in each.

        `tokens` is what the request may use (its reservation); settle corrects it to the
        actual total. Returns the ticket to release later and the state after recording.
        Raises `Refusal` ("rate_limit_exceeded") and records nothing when any limit refuses.
        """
        active = [lim for lim in limits if lim.active]
        windows = [self._window(lim.scope, lim.scope_id) for lim in active]
        violations: list[_Violation] = []
        for lim, window in zip(active, windows, strict=True):
            window.prune(now)
            violations.extend(_check(lim, window, tokens, now))
        if violations:
            worst = max(violations, key=lambda v: v.retry_after)
            raise Refusal(
                worst.message,
                code="rate_limit_exceeded",
                retry_after=worst.retry_after,
                metadata=_state(active, windows, now).headers(),
            )
        ticket = Ticket()
        for window in windows:
            entry = _Entry(now, tokens)
            window.entries.append(entry)
            window.tokens += tokens
            window.inflight += 1
            ticket.windows.append(window)
            ticket.entries.append((window, entry))
        return ticket, _state(active, windows, now)

    def state(self, limits: Sequence[Limits], now: float) -> RateLimitState:
        """The tightest limit's values without recording anything."""
        active = [lim for lim in limits if lim.active]
        windows = [self._window(lim.scope, lim.scope_id) for lim in active]
        for window in windows:
            window.prune(now)
        return _state(active, windows, now)

    def recount(self, scopes: Iterable[tuple[str, str]]) -> Ticket:
        """Counts a request already in flight (found in the database on start) in each scope."""
        ticket = Ticket()
        for scope, scope_id in scopes:
            window = self._window(scope, scope_id)
            window.inflight += 1
            ticket.windows.append(window)
        return ticket

    @staticmethod
    def settle(ticket: Ticket, actual_tokens: int) -> None:
        """The request finished: it counts its actual tokens (if still in the window), not the
        reservation, and no longer counts as in flight."""
        for window, entry in ticket.entries:
            if entry.live:
                window.tokens += actual_tokens - entry.n
                entry.n = actual_tokens
        RateLimiter.release(ticket)

    @staticmethod
    def release(ticket: Ticket) -> None:
        """The request is no longer in flight (its window entries stay, as a sent request)."""
        for window in ticket.windows:
            window.inflight = max(0, window.inflight - 1)
        ticket.windows.clear()

    @staticmethod
    def undo(ticket: Ticket) -> None:
        """The request was refused after all (by a budget): as if it never came."""
        for window, entry in ticket.entries:
            if entry.live:
                window.entries.remove(entry)
                window.tokens -= entry.n
                entry.live = False
        ticket.entries.clear()
        RateLimiter.release(ticket)

    def compact(self, now: float) -> None:
        """Forgets scopes with nothing in their window and nothing in flight (bounds memory)."""
        for key, window in list(self._windows.items()):
            window.prune(now)
            if not window.entries and window.inflight == 0:
                del self._windows[key]

    def inflight(self, scope: str, scope_id: str) -> int:
        window = self._windows.get((scope, scope_id))
        return window.inflight if window else 0


def _check(lim: Limits, window: _Window, tokens: int, now: float) -> list[_Violation]:
    found = []
    used = len(window.entries)
    if lim.rpm and used + 1 > lim.rpm:
        # The request fits once enough of the oldest entries have left the window.
        wait = window.entries[used - lim.rpm].t + WINDOW_S - now if used >= lim.rpm else 0.0
        retry = _whole_seconds(wait)
        found.append(
            _Violation(
                f"Rate limit reached for requests per minute (RPM) on {lim.label}: "
                f"Limit {lim.rpm}, Used {used}, Requested 1. "
                f"Please try again in {format_reset(retry * 1000)}.",
                retry,
            )
        )
    if lim.tpm and window.tokens + tokens > lim.tpm:
        if tokens > lim.tpm:
            retry = int(WINDOW_S)
            message = (
                f"Request too large for tokens per minute (TPM) on {lim.label}: "
                f"Limit {lim.tpm}, Requested {tokens}. Lower the prompt or max_tokens."
            )
        else:
            retry = _whole_seconds(_tokens_wait(window, tokens, lim.tpm, now))
            message = (
                f"Rate limit reached for tokens per minute (TPM) on {lim.label}: "
                f"Limit {lim.tpm}, Used {window.tokens}, Requested {tokens}. "
                f"Please try again in {format_reset(retry * 1000)}."
            )
        found.append(_Violation(message, retry))
    if lim.max_concurrent and window.inflight + 1 > lim.max_concurrent:
        found.append(
            _Violation(
                f"Rate limit reached for concurrent requests on {lim.label}: "
                f"Limit {lim.max_concurrent}, Used {window.inflight}, Requested 1. "
                f"Please try again in {format_reset(CONCURRENCY_RETRY_S * 1000)}.",
                CONCURRENCY_RETRY_S,
            )
        )
    return found


def _tokens_wait(window: _Window, tokens: int, tpm: int, now: float) -> float:
    """Seconds until enough of the oldest entries leave for `tokens` more to fit."""
    excess = window.tokens + tokens - tpm
    for entry in window.entries:
        excess -= entry.n
        if excess <= 0:
            return entry.t + WINDOW_S - now
    return WINDOW_S


def _whole_seconds(wait: float) -> int:
    return max(1, math.ceil(wait))


def _state(limits: Sequence[Limits], windows: Sequence[_Window], now: float) -> RateLimitState:
    """The least remaining requests and tokens among the scopes, each with its window's reset."""
    best_req: tuple[int, int, int] | None = None  # (remaining, limit, reset_ms)
    best_tok: tuple[int, int, int] | None = None
    for lim, window in zip(limits, windows, strict=True):
        if lim.rpm:
            req = (max(0, lim.rpm - len(window.entries)), lim.rpm, window.reset_ms(now))
            if best_req is None or req[0] < best_req[0]:
                best_req = req
        if lim.tpm:
            tok = (max(0, lim.tpm - window.tokens), lim.tpm, window.reset_ms(now))
            if best_tok is None or tok[0] < best_tok[0]:
                best_tok = tok
    state = RateLimitState()
    if best_req is not None:
        remaining, limit, reset = best_req
        state = replace(
            state, limit_requests=limit, remaining_requests=remaining, reset_requests_ms=reset
        )
    if best_tok is not None:
        remaining, limit, reset = best_tok
        state = replace(
            state, limit_tokens=limit, remaining_tokens=remaining, reset_tokens_ms=reset
        )
    return state
