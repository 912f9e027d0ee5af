"""Usage records: the ledger's row for every finished, refused or expired request."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from services.metering.models import usage_records

USAGE = usage_records
# What a settle may report; "expired" is written only by metering itself.
SETTLE_STATUSES = frozenset({"ok", "error", "cancelled", "rejected"})


@dataclass(frozen=True)
class UsageRecord:
    """One request, as the ledger returns it."""

    id: str
    created_at: datetime  # aware, UTC
    created_ms: int
    request_id: str
    reservation_id: str | None
    org_id: str
    key_id: str
    model: str
    model_digest: str
    endpoint: str
    prompt_tokens: int
    completion_tokens: int
    status: str
    latency_ms: float
    ttft_ms: float
    project_id: str = ""
    client_ip: str = ""
    provider: str = ""

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def new_record(
    *,
    now: float,
    reservation_id: str | None,
    request_id: str,
    org_id: str,
    project_id: str,
    key_id: str,
    model: str,
    endpoint: str,
    status: str,
    client_ip: str,
    provider: str,
    model_digest: str = "",
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    latency_ms: float = 0.0,
    ttft_ms: float = 0.0,
) -> UsageRecord:
    """A record stamped `now` (unix seconds) with a fresh id, ready for `insert_values`."""
    created_ms = int(now * 1000)
    return UsageRecord(
        id="usage_" + secrets.token_hex(12),
        created_at=datetime.fromtimestamp(created_ms / 1000, UTC),
        created_ms=created_ms,
        request_id=request_id,
        reservation_id=reservation_id,
        org_id=org_id,
        key_id=key_id,
        model=model,
        model_digest=model_digest,
        endpoint=endpoint,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        status=status,
        latency_ms=latency_ms,
        ttft_ms=ttft_ms,
        project_id=project_id,
        client_ip=client_ip,
        provider=provider,
    )


def unreserved_record_id(org_id: str, request_id: str) -> str:
    """The id of the record a settle without a reservation writes (a request refused before
    admission): derived from the organization and the caller's request id, so that the same
    settle sent again (a retry, the edge's outbox) collides with the first record instead of
    writing a second."""
    digest = hashlib.sha256(f"{org_id}\0{request_id}".encode()).hexdigest()
    return "usage_" + digest[:24]


def insert_values(record: UsageRecord) -> dict[str, Any]:
    return asdict(record)


def from_row(row: Mapping[Any, Any]) -> UsageRecord:
    return UsageRecord(**{name: row[name] for name in _FIELDS})


_FIELDS = tuple(UsageRecord.__dataclass_fields__)
