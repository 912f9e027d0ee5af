"""The rate-limit windows, in memory and in Redis alike: sliding minutes, concurrency, the
tightest limit, undo and correction."""

from __future__ import annotations

import itertools

import pytest

from services.metering.memory_limits import MemoryLimiter
from services.metering.ratelimit import Limiter, Limits, RateLimitState
from services.metering.refusals import Refusal
from tests.metering.conftest import FakeClock

ORG = "org_1"
LEASE_MS = 900_000
KEY = [("key", "key_ab12")]
_ids = itertools.count()


def key(rpm: int = 0, tpm: int = 0, conc: int = 0, scope_id: str = "key_ab12") -> Limits:
    return Limits("key", scope_id, f"key {scope_id}", rpm, tpm, conc)


async def acquire(
    limiter: Limiter, limits: list[Limits], tokens: int
) -> tuple[str, RateLimitState]:
    rid = f"res_{next(_ids):06d}"
    return rid, await limiter.acquire(rid, ORG, limits, tokens, LEASE_MS)


async def test_rpm_counts_down_then_refuses_with_retry_after_and_headers(
    limiter: Limiter, clock: FakeClock
) -> None:
    remaining = []
    for _ in range(5):
        _, state = await acquire(limiter, [key(rpm=5)], 10)
        remaining.append(state.remaining_requests)
        assert state.limit_requests == 5 and state.limit_tokens == 0
        clock.advance(1)
    assert remaining == [4, 3, 2, 1, 0]
    clock.advance(7)
    with pytest.raises(Refusal) as err:
        await acquire(limiter, [key(rpm=5)], 10)
    exc = err.value
    assert exc.code == "rate_limit_exceeded"
    # The oldest request leaves the window 60 s after it came: 48 s from now.
    assert exc.retry_after == 48
    assert exc.message == (
        "Rate limit reached for requests per minute (RPM) on key key_ab12: "
        "Limit 5, Used 5, Requested 1. Please try again in 48s."
    )
    assert exc.metadata["x-ratelimit-limit-requests"] == "5"
    assert exc.metadata["x-ratelimit-remaining-requests"] == "0"
    assert exc.metadata["x-ratelimit-reset-requests"] == "48s"


async def test_the_window_slides(limiter: Limiter, clock: FakeClock) -> None:
    for _ in range(3):
        await acquire(limiter, [key(rpm=3)], 0)
        clock.advance(1)
    clock.advance(56.5)  # 59.5 s after the first
    with pytest.raises(Refusal):
        await acquire(limiter, [key(rpm=3)], 0)
    clock.advance(0.5)
    _, state = await acquire(limiter, [key(rpm=3)], 0)  # the first one just left
    assert state.remaining_requests == 0
    assert state.reset_requests_ms == 1000  # the second leaves next


async def test_tpm_counts_the_reservation_and_settle_corrects_it(
    limiter: Limiter, clock: FakeClock
) -> None:
    first, state = await acquire(limiter, [key(tpm=1000)], 600)
    assert (state.limit_tokens, state.remaining_tokens) == (1000, 400)
    clock.advance(1)
    with pytest.raises(Refusal) as err:
        await acquire(limiter, [key(tpm=1000)], 600)
    assert "tokens per minute (TPM)" in err.value.message
    assert "Limit 1000, Used 600, Requested 600" in err.value.message
    assert err.value.retry_after == 59
    await limiter.settle(first, ORG, KEY, 150)  # it used far less than it reserved
    clock.advance(1)
    _, state = await acquire(limiter, [key(tpm=1000)], 600)
    assert state.remaining_tokens == 1000 - 150 - 600


async def test_tpm_retry_waits_for_enough_tokens_to_leave(
    limiter: Limiter, clock: FakeClock
) -> None:
    for n in (100, 100, 700):
        await acquire(limiter, [key(tpm=1000)], n)
        clock.advance(10)
    with pytest.raises(Refusal) as err:
        await acquire(limiter, [key(tpm=1000)], 250)
    # 150 must leave: the two oldest entries free 200, the second of them 40 s from now.
    assert err.value.retry_after == 40


async def test_a_request_larger_than_the_tpm_says_so(limiter: Limiter) -> None:
    with pytest.raises(Refusal) as err:
        await acquire(limiter, [key(tpm=100)], 512)
    assert err.value.message.startswith("Request too large for tokens per minute (TPM)")
    assert err.value.retry_after == 60


async def test_concurrency_counts_until_settle(limiter: Limiter) -> None:
    first, _ = await acquire(limiter, [key(conc=2)], 0)
    await acquire(limiter, [key(conc=2)], 0)
    with pytest.raises(Refusal) as err:
        await acquire(limiter, [key(conc=2)], 0)
    assert "concurrent requests" in err.value.message and err.value.retry_after == 1
    assert "Limit 2, Used 2" in err.value.message
    await limiter.settle(first, ORG, KEY, 0)
    await acquire(limiter, [key(conc=2)], 0)
    with pytest.raises(Refusal):
        await acquire(limiter, [key(conc=2)], 0)


async def test_release_is_once_per_reservation(limiter: Limiter) -> None:
    first, _ = await acquire(limiter, [key(conc=3)], 0)
    await acquire(limiter, [key(conc=3)], 0)
    await limiter.release(first, ORG, KEY)
    await limiter.release(first, ORG, KEY)
    await acquire(limiter, [key(conc=3)], 0)
    await acquire(limiter, [key(conc=3)], 0)
    # Three in flight: had the second release counted, there would be room for this one.
    with pytest.raises(Refusal) as err:
        await acquire(limiter, [key(conc=3)], 0)
    assert "Used 3" in err.value.message


async def test_the_tightest_limit_is_reported(limiter: Limiter) -> None:
    limits = [
        key(rpm=100, tpm=10_000),
        Limits("org", ORG, "organization org_1", rpm=50, tpm=500),
        Limits("plan", ORG, "plan free of organization org_1", rpm=3),
    ]
    _, state = await acquire(limiter, limits, 200)
    assert state == RateLimitState(
        limit_requests=3,
        remaining_requests=2,
        reset_requests_ms=60_000,
        limit_tokens=500,
        remaining_tokens=300,
        reset_tokens_ms=60_000,
    )
    assert await limiter.state(ORG, limits) == state


async def test_a_refusal_records_nothing_in_any_window(limiter: Limiter, clock: FakeClock) -> None:
    org = Limits("org", ORG, "organization org_1", rpm=1)
    await acquire(limiter, [key(rpm=10), org], 0)
    clock.advance(1)
    with pytest.raises(Refusal) as err:
        await acquire(limiter, [key(rpm=10), org], 0)
    assert "on organization org_1" in err.value.message
    # The key's window did not count the refused request.
    _, state = await acquire(limiter, [key(rpm=10)], 0)
    assert state.remaining_requests == 8


async def test_undo_takes_the_request_out_of_every_window(limiter: Limiter) -> None:
    limits = [key(rpm=2, tpm=100, conc=1)]
    rid, _ = await acquire(limiter, limits, 40)
    await limiter.undo(rid, ORG, KEY)
    assert await limiter.state(ORG, limits) == RateLimitState(
        limit_requests=2, remaining_requests=2, limit_tokens=100, remaining_tokens=100
    )
    await acquire(limiter, limits, 40)  # the concurrency slot is free too


async def test_scopes_without_limits_are_not_tracked(limiter: Limiter) -> None:
    _, state = await acquire(limiter, [key()], 10)
    assert state == RateLimitState()
    assert await limiter.state(ORG, [key(rpm=1)]) == RateLimitState(
        limit_requests=1, remaining_requests=1
    )


async def test_a_settle_after_the_window_moved_on_changes_nothing(
    limiter: Limiter, clock: FakeClock
) -> None:
    rid, _ = await acquire(limiter, [key(tpm=1000)], 600)
    clock.advance(61)
    await limiter.settle(rid, ORG, KEY, 900)  # its entry left the window already
    _, state = await acquire(limiter, [key(tpm=1000)], 100)
    assert state.remaining_tokens == 900


async def test_many_expired_entries_are_pruned_at_once(limiter: Limiter, clock: FakeClock) -> None:
    for _ in range(2500):  # more than one pruning chunk of the Redis script
        await acquire(limiter, [key(rpm=10_000, tpm=1_000_000)], 3)
    clock.advance(60)
    _, state = await acquire(limiter, [key(rpm=10_000, tpm=1_000_000)], 3)
    assert (state.remaining_requests, state.remaining_tokens) == (9_999, 999_997)


async def test_memory_recount_and_compact(clock: FakeClock) -> None:
    limiter = MemoryLimiter(clock)
    scopes = [("key", "k"), ("org", "o")]
    assert await limiter.recover([("res_1", "o", scopes)]) == 1
    assert await limiter.recover([("res_1", "o", scopes)]) == 0
    assert limiter.inflight("org", "o") == 1
    await limiter.compact()
    assert limiter.inflight("org", "o") == 1  # still in flight: kept
    await limiter.release("res_1", "o", scopes)
    await limiter.compact()
    assert limiter.inflight("org", "o") == 0
