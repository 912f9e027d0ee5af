"""OpenAI's `x-ratelimit-*` headers: metering builds them for refusals, the edge for every reply.

One formatter on both sides, so a client sees the same values whether it was admitted or not.
"""

from __future__ import annotations

import math


def format_reset(ms: int) -> str:
    """A duration as OpenAI writes it in reset headers (Go style): "350ms", "12s", "6m30s".

    Durations of a second or more are rounded up to whole seconds: a client that waits the time
    shown must find the capacity freed, never a few milliseconds short.
    """
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    seconds = math.ceil(ms / 1000)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def rate_limit_headers(
    limit_requests: int,
    remaining_requests: int,
    reset_requests_ms: int,
    limit_tokens: int,
    remaining_tokens: int,
    reset_tokens_ms: int,
) -> dict[str, str]:
    """The six `x-ratelimit-*` headers; a triple is left out when its limit is 0 (none applies)."""
    headers: dict[str, str] = {}
    if limit_requests > 0:
        headers["x-ratelimit-limit-requests"] = str(limit_requests)
        headers["x-ratelimit-remaining-requests"] = str(max(0, remaining_requests))
        headers["x-ratelimit-reset-requests"] = format_reset(reset_requests_ms)
    if limit_tokens > 0:
        headers["x-ratelimit-limit-tokens"] = str(limit_tokens)
        headers["x-ratelimit-remaining-tokens"] = str(max(0, remaining_tokens))
        headers["x-ratelimit-reset-tokens"] = format_reset(reset_tokens_ms)
    return headers
