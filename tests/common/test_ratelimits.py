"""The x-ratelimit-* formatter shared by metering and the edge."""

from __future__ import annotations

import pytest

from services.common.ratelimits import format_reset, rate_limit_headers


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "0s"),
        (-5, "0s"),
        (1, "1ms"),
        (350, "350ms"),
        (999, "999ms"),
        (1000, "1s"),
        (1001, "2s"),  # rounded up: waiting the time shown is always enough
        (12_000, "12s"),
        (59_500, "1m0s"),
        (60_000, "1m0s"),
        (390_000, "6m30s"),
        (3_723_000, "1h2m3s"),
        (7_200_000, "2h0m0s"),
    ],
)
def test_format_reset(ms: int, text: str) -> None:
    assert format_reset(ms) == text


def test_headers_carry_both_triples() -> None:
    assert rate_limit_headers(60, 59, 1000, 1000, 488, 6_000) == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "488",
        "x-ratelimit-reset-tokens": "6s",
    }


def test_a_triple_without_a_limit_is_left_out() -> None:
    assert rate_limit_headers(0, 0, 0, 100, 40, 350) == {
        "x-ratelimit-limit-tokens": "100",
        "x-ratelimit-remaining-tokens": "40",
        "x-ratelimit-reset-tokens": "350ms",
    }
    assert set(rate_limit_headers(5, 0, 12_000, 0, 0, 0)) == {
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
    }
    assert rate_limit_headers(0, 0, 0, 0, 0, 0) == {}


def test_remaining_never_shows_negative() -> None:
    assert rate_limit_headers(5, -2, 0, 0, 0, 0)["x-ratelimit-remaining-requests"] == "0"
