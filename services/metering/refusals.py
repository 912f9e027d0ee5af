"""The refusal metering returns when a request must wait: a 429 with a retry-after for the edge."""

from __future__ import annotations

from services.common.errors import ResourceExhausted


class Refusal(ResourceExhausted):
    """RESOURCE_EXHAUSTED with `retry_after` (whole seconds, or None when waiting cannot help).

    `code` is "rate_limit_exceeded" or "insufficient_quota"; `metadata` carries the
    x-ratelimit-* values as they stood, which the edge copies to the HTTP response.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str,
        retry_after: int | None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, code=code, metadata=metadata)
        self.retry_after = retry_after
