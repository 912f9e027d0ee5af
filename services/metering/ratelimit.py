"""Requests and tokens per minute and concurrent requests: what every rate limiter decides alike.

Two limiters keep the windows: `memory_limits.MemoryLimiter` in one metering process (the
embedded default) and `redis_limits.RedisLimiter` in Redis, shared by every metering replica.
Both reduce a scope's window to a `WindowView` (what the check saw, in whole milliseconds) and
refuse by the same rule; the refusal's message, retry-after and x-ratelimit-* values are built
here from those views, so both limiters answer a client identically.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from services.common.ratelimits import format_reset, rate_limit_headers
from services.metering.refusals import Refusal

WINDOW_MS = 60_000
# Nobody can say when an in-flight request will finish; a second is a polite first retry.
CONCURRENCY_RETRY_S = 1

# A scope a reservation may count in: ("key", key_id), ("project", project_id),
# ("org", org_id) or ("plan", org_id).
Scope = tuple[str, str]


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


@dataclass(frozen=True)
class WindowView:
    """One scope's last minute as a check saw it, before the request was recorded.

    The waits are only meaningful for a limit the request breaks: `rpm_wait_ms` until enough of
    the oldest requests leave for one more to fit, `tpm_wait_ms` until enough of their tokens
    leave for this request's tokens to fit.
    """

    requests: int
    tokens: int
    inflight: int
    reset_ms: int  # until the oldest entry leaves the window; 0 when it is empty
    rpm_wait_ms: int = 0
    tpm_wait_ms: int = 0

    def recorded(self, tokens: int) -> WindowView:
        """The view once a request of `tokens` was recorded now."""
        return replace(
            self,
            requests=self.requests + 1,
            tokens=self.tokens + tokens,
            inflight=self.inflight + 1,
            reset_ms=self.reset_ms if self.requests else WINDOW_MS,
        )


def breaks(lim: Limits, view: WindowView, tokens: int) -> bool:
    """Whether one more request of `tokens` would break any of the scope's limits. The Redis
    script applies the same rule (`redis_limits.ADMIT`)."""
    return bool(
        (lim.rpm and view.requests + 1 > lim.rpm)
        or (lim.tpm and view.tokens + tokens > lim.tpm)
        or (lim.max_concurrent and view.inflight + 1 > lim.max_concurrent)
    )


@dataclass(frozen=True)
class _Violation:
    message: str
    retry_after: int


def refusal(limits: Sequence[Limits], views: Sequence[WindowView], tokens: int) -> Refusal | None:
    """The refusal of a request of `tokens` (the worst limit's retry-after, the state as it
    stood), or None when every scope allows it."""
    violations: list[_Violation] = []
    for lim, view in zip(limits, views, strict=True):
        violations.extend(_violations(lim, view, tokens))
    if not violations:
        return None
    worst = max(violations, key=lambda v: v.retry_after)
    return Refusal(
        worst.message,
        code="rate_limit_exceeded",
        retry_after=worst.retry_after,
        metadata=state(limits, views).headers(),
    )


def _violations(lim: Limits, view: WindowView, tokens: int) -> list[_Violation]:
    found = []
    if lim.rpm and view.requests + 1 > lim.rpm:
        retry = _whole_seconds(view.rpm_wait_ms)
        found.append(
            _Violation(
                f"Rate limit reached for requests per minute (RPM) on {lim.label}: "
                f"Limit {lim.rpm}, Used {view.requests}, Requested 1. "
                f"Please try again in {format_reset(retry * 1000)}.",
                retry,
            )
        )
    if lim.tpm and view.tokens + tokens > lim.tpm:
        if tokens > lim.tpm:
            retry = WINDOW_MS // 1000
            message = (
                f"Request too large for tokens per minute (TPM) on {lim.label}: "
                f"Limit {lim.tpm}, Requested {tokens}. Lower the prompt or max_tokens."
            )
        else:
            retry = _whole_seconds(view.tpm_wait_ms)
            message = (
                f"Rate limit reached for tokens per minute (TPM) on {lim.label}: "
                f"Limit {lim.tpm}, Used {view.tokens}, Requested {tokens}. "
                f"Please try again in {format_reset(retry * 1000)}."
            )
        found.append(_Violation(message, retry))
    if lim.max_concurrent and view.inflight + 1 > lim.max_concurrent:
        found.append(
            _Violation(
                f"Rate limit reached for concurrent requests on {lim.label}: "
                f"Limit {lim.max_concurrent}, Used {view.inflight}, Requested 1. "
                f"Please try again in {format_reset(CONCURRENCY_RETRY_S * 1000)}.",
                CONCURRENCY_RETRY_S,
            )
        )
    return found


def _whole_seconds(wait_ms: int) -> int:
    return max(1, math.ceil(wait_ms / 1000))


def state(limits: Sequence[Limits], views: Sequence[WindowView]) -> RateLimitState:
    """The least remaining requests and tokens among the scopes, each with its window's reset."""
    best_req: tuple[int, int, int] | None = None  # (remaining, limit, reset_ms)
    best_tok: tuple[int, int, int] | None = None
    for lim, view in zip(limits, views, strict=True):
        if lim.rpm:
            req = (max(0, lim.rpm - view.requests), lim.rpm, view.reset_ms)
            if best_req is None or req[0] < best_req[0]:
                best_req = req
        if lim.tpm:
            tok = (max(0, lim.tpm - view.tokens), lim.tpm, view.reset_ms)
            if best_tok is None or tok[0] < best_tok[0]:
                best_tok = tok
    result = RateLimitState()
    if best_req is not None:
        remaining, limit, reset = best_req
        result = replace(
            result, limit_requests=limit, remaining_requests=remaining, reset_requests_ms=reset
        )
    if best_tok is not None:
        remaining, limit, reset = best_tok
        result = replace(
            result, limit_tokens=limit, remaining_tokens=remaining, reset_tokens_ms=reset
        )
    return result


class LimiterUnavailable(Exception):
    """The limiter's store cannot be reached; admission fails closed (UNAVAILABLE)."""


class Limiter(ABC):
    """Where the windows live. Each admission is one atomic check-and-record.

    A reservation counts once in every scope whose limits are active when it is admitted: one
    entry in the scope's 60-second window (a request, and the tokens it reserved) and one
    request in flight until it settles, expires or is undone. Settlement, expiry, undo and
    renewal name the reservation and every scope it may count in (`Scope`s); a scope it does
    not count in is left alone.
    """

    @abstractmethod
    async def acquire(
        self,
        reservation_id: str,
        org_id: str,
        limits: Sequence[Limits],
        tokens: int,
        lease_ms: int,
    ) -> RateLimitState:
        """Checks every scope's limits and, when all allow it, records the request in each.

        `tokens` is what the request may use (its reservation); settle corrects it to the
        actual total. `lease_ms` is how long its concurrency slot lasts unless renewed (a
        limiter whose slots live in the process may hold them until settle or expiry instead).
        Returns the state after recording. Raises `Refusal` ("rate_limit_exceeded") and records
        nothing when any limit refuses; `LimiterUnavailable` when its store is unreachable.
        """

    @abstractmethod
    async def state(self, org_id: str, limits: Sequence[Limits]) -> RateLimitState:
        """The tightest limit's values without recording anything."""

    @abstractmethod
    async def settle(
        self, reservation_id: str, org_id: str, scopes: Sequence[Scope], actual_tokens: int
    ) -> None:
        """The request finished: it counts its actual tokens (if still in the window), not the
        reservation, and no longer counts as in flight."""

    @abstractmethod
    async def release(self, reservation_id: str, org_id: str, scopes: Sequence[Scope]) -> None:
        """The request is no longer in flight (its window entries stay, as a sent request)."""

    @abstractmethod
    async def undo(self, reservation_id: str, org_id: str, scopes: Sequence[Scope]) -> None:
        """The request was refused after all (by a budget): as if it never came."""

    @abstractmethod
    async def renew(
        self, reservation_id: str, org_id: str, scopes: Sequence[Scope], lease_ms: int
    ) -> None:
        """Extends the request's concurrency slots by `lease_ms` from now."""

    @abstractmethod
    async def recover(self, inflight: Iterable[tuple[str, str, Sequence[Scope]]]) -> int:
        """Counts requests found open in the database on start, (reservation_id, org_id,
        scopes), that the windows do not know of; returns how many it counted."""

    @abstractmethod
    async def compact(self) -> None:
        """Forgets what no window needs any more (bounds memory)."""

    async def close(self) -> None:
        """Releases connections; the default holds none."""
        return None


def request_scopes(org_id: str, project_id: str, key_id: str) -> list[Scope]:
    """Every scope a request of this principal may count in."""
    scopes: list[Scope] = [("key", key_id), ("org", org_id), ("plan", org_id)]
    if project_id:
        scopes.append(("project", project_id))
    return scopes
