"""The in-memory windows: sliding minutes, concurrency, the tightest limit, undo and correction."""

from __future__ import annotations

import pytest

from services.metering.ratelimit import Limits, RateLimiter, RateLimitState
from services.metering.refusals import Refusal

T0 = 1_000_000.0


def key(rpm: int = 0, tpm: int = 0, conc: int = 0, scope_id: str = "key_ab12") -> Limits:
    return Limits("key", scope_id, f"key {scope_id}", rpm, tpm, conc)


def test_rpm_counts_down_then_refuses_with_retry_after_and_headers() -> None:
    limiter = RateLimiter()
    remaining = []
    for i in range(5):
        _, state = limiter.acquire([key(rpm=5)], 10, T0 + i)
        remaining.append(state.remaining_requests)
        assert state.limit_requests == 5 and state.limit_tokens == 0
    assert remaining == [4, 3, 2, 1, 0]
    with pytest.raises(Refusal) as err:
        limiter.acquire([key(rpm=5)], 10, T0 + 12)
    exc = err.value
    assert exc.code == "rate_limit_exceeded"
    # The oldest request (at T0) leaves the window at T0 + 60: 48 s from now.
    assert exc.retry_after == 48
    assert exc.message == (
        "Rate limit reached for requests per minute (RPM) on key key_ab12: "
        "Limit 5, Used 5, Requested 1. Please try again in 48s."
    )
    assert exc.metadata["x-ratelimit-limit-requests"] == "5"
    assert exc.metadata["x-ratelimit-remaining-requests"] == "0"
    assert exc.metadata["x-ratelimit-reset-requests"] == "48s"


def test_the_window_slides() -> None:
    limiter = RateLimiter()
    for i in range(3):
        limiter.acquire([key(rpm=3)], 0, T0 + i)
    with pytest.raises(Refusal):
        limiter.acquire([key(rpm=3)], 0, T0 + 59.5)
    _, state = limiter.acquire([key(rpm=3)], 0, T0 + 60.0)  # the first one just left
    assert state.remaining_requests == 0
    assert state.reset_requests_ms == 1000  # the one at T0 + 1 leaves next


def test_tpm_counts_the_reservation_and_settle_corrects_it() -> None:
    limiter = RateLimiter()
    ticket, state = limiter.acquire([key(tpm=1000)], 600, T0)
    assert (state.limit_tokens, state.remaining_tokens) == (1000, 400)
    with pytest.raises(Refusal) as err:
        limiter.acquire([key(tpm=1000)], 600, T0 + 1)
    assert "tokens per minute (TPM)" in err.value.message
    assert "Limit 1000, Used 600, Requested 600" in err.value.message
    assert err.value.retry_after == 59
    limiter.settle(ticket, 150)  # it used far less than it reserved
    _, state = limiter.acquire([key(tpm=1000)], 600, T0 + 2)
    assert state.remaining_tokens == 1000 - 150 - 600


def test_tpm_retry_waits_for_enough_tokens_to_leave() -> None:
    limiter = RateLimiter()
    for i, n in enumerate((100, 100, 700)):
        limiter.acquire([key(tpm=1000)], n, T0 + 10 * i)
    with pytest.raises(Refusal) as err:
        limiter.acquire([key(tpm=1000)], 250, T0 + 30)
    # 150 must leave: the two entries at T0 and T0 + 10 free 200, the second at T0 + 70.
    assert err.value.retry_after == 40


def test_a_request_larger_than_the_tpm_says_so() -> None:
    with pytest.raises(Refusal) as err:
        RateLimiter().acquire([key(tpm=100)], 512, T0)
    assert err.value.message.startswith("Request too large for tokens per minute (TPM)")
    assert err.value.retry_after == 60


def test_concurrency_counts_until_release() -> None:
    limiter = RateLimiter()
    first, _ = limiter.acquire([key(conc=2)], 0, T0)
    limiter.acquire([key(conc=2)], 0, T0)
    with pytest.raises(Refusal) as err:
        limiter.acquire([key(conc=2)], 0, T0)
    assert "concurrent requests" in err.value.message and err.value.retry_after == 1
    limiter.settle(first, 0)
    limiter.acquire([key(conc=2)], 0, T0)
    assert limiter.inflight("key", "key_ab12") == 2


def test_release_is_once_per_ticket() -> None:
    limiter = RateLimiter()
    ticket, _ = limiter.acquire([key(conc=3)], 0, T0)
    limiter.acquire([key(conc=3)], 0, T0)
    limiter.release(ticket)
    limiter.release(ticket)
    assert limiter.inflight("key", "key_ab12") == 1


def test_the_tightest_limit_is_reported() -> None:
    limiter = RateLimiter()
    limits = [
        key(rpm=100, tpm=10_000),
        Limits("org", "org_1", "organization org_1", rpm=50, tpm=500),
        Limits("plan", "org_1", "plan free of organization org_1", rpm=3),
    ]
    _, state = limiter.acquire(limits, 200, T0)
    assert state == RateLimitState(
        limit_requests=3,
        remaining_requests=2,
        reset_requests_ms=60_000,
        limit_tokens=500,
        remaining_tokens=300,
        reset_tokens_ms=60_000,
    )


def test_a_refusal_records_nothing_in_any_window() -> None:
    limiter = RateLimiter()
    org = Limits("org", "org_1", "organization org_1", rpm=1)
    limiter.acquire([key(rpm=10), org], 0, T0)
    with pytest.raises(Refusal) as err:
        limiter.acquire([key(rpm=10), org], 0, T0 + 1)
    assert "on organization org_1" in err.value.message
    # The key's window did not count the refused request.
    _, state = limiter.acquire([key(rpm=10)], 0, T0 + 2)
    assert state.remaining_requests == 8


def test_undo_takes_the_request_out_of_every_window() -> None:
    limiter = RateLimiter()
    limits = [key(rpm=2, tpm=100, conc=1)]
    ticket, _ = limiter.acquire(limits, 40, T0)
    limiter.undo(ticket)
    assert limiter.state(limits, T0) == RateLimitState(
        limit_requests=2, remaining_requests=2, limit_tokens=100, remaining_tokens=100
    )
    assert limiter.inflight("key", "key_ab12") == 0


def test_scopes_without_limits_are_not_tracked() -> None:
    limiter = RateLimiter()
    ticket, state = limiter.acquire([key()], 10, T0)
    assert state == RateLimitState() and not ticket.windows


def test_recount_and_compact() -> None:
    limiter = RateLimiter()
    ticket = limiter.recount([("key", "k"), ("org", "o")])
    assert limiter.inflight("org", "o") == 1
    limiter.compact(T0)
    assert limiter.inflight("org", "o") == 1  # still in flight: kept
    limiter.release(ticket)
    limiter.compact(T0)
    assert limiter.inflight("org", "o") == 0
