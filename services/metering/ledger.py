"""Metering's domain logic: admission, settlement and the usage ledger. No gRPC here.

A request is admitted (a reservation is written), runs, and is settled (one usage record is
written and the reservation closed, in one transaction committed before `settle` returns).
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from services.common.errors import InvalidArgument
from services.metering.models import ReservationRow, UsageRow

log = logging.getLogger(__name__)

STATUSES = frozenset({"ok", "error", "cancelled", "rejected"})
DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000


@dataclass(frozen=True)
class UsageRecord:
    """One finished request, as the ledger returns it."""

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

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def _require(value: str, name: str) -> None:
    if not value:
        raise InvalidArgument(f"{name} is required", param=name)


def _non_negative(value: float, name: str) -> None:
    if value < 0:
        raise InvalidArgument(f"{name} must not be negative", param=name)


def _record(row: UsageRow) -> UsageRecord:
    return UsageRecord(
        id=row.id,
        created_at=row.created_at,
        created_ms=row.created_ms,
        request_id=row.request_id,
        reservation_id=row.reservation_id,
        org_id=row.org_id,
        key_id=row.key_id,
        model=row.model,
        model_digest=row.model_digest,
        endpoint=row.endpoint,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        status=row.status,
        latency_ms=row.latency_ms,
        ttft_ms=row.ttft_ms,
    )


class Ledger:
    """Reservations and usage records over one database."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def admit(
        self,
        *,
        org_id: str,
        key_id: str,
        model: str,
        upper_bound_tokens: int,
        endpoint: str = "",
        request_id: str = "",
    ) -> str:
        """Admits a request and reserves its upper bound of tokens; returns the reservation id.

        Rate limits, concurrency caps and token budgets plug in here, checked and reserved in
        the same transaction as the reservation row, and refuse with `ResourceExhausted`.
        """
        _require(org_id, "org_id")
        _require(key_id, "key_id")
        _require(model, "model")
        _non_negative(upper_bound_tokens, "upper_bound_tokens")
        reservation_id = "res_" + secrets.token_hex(12)
        async with self._sessions.begin() as session:
            session.add(
                ReservationRow(
                    id=reservation_id,
                    org_id=org_id,
                    key_id=key_id,
                    model=model,
                    endpoint=endpoint,
                    request_id=request_id,
                    upper_bound_tokens=upper_bound_tokens,
                    created_at=datetime.now(UTC),
                    settled_at=None,
                )
            )
        return reservation_id

    async def settle(
        self,
        *,
        reservation_id: str,
        org_id: str,
        key_id: str,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        status: str,
        model_digest: str = "",
        endpoint: str = "",
        latency_ms: float = 0.0,
        ttft_ms: float = 0.0,
        request_id: str = "",
    ) -> UsageRecord:
        """Writes the usage record and closes the reservation, durably, in one transaction.

        Settling a reservation again returns the first record unchanged. An unknown
        reservation id is logged and its usage still recorded: losing usage is worse than an
        odd record. An empty `reservation_id` (a request refused before admission) records
        usage without idempotency.
        """
        if status not in STATUSES:
            raise InvalidArgument(
                f"status must be one of {', '.join(sorted(STATUSES))}", param="status"
            )
        for value, name in (
            (prompt_tokens, "prompt_tokens"),
            (completion_tokens, "completion_tokens"),
            (latency_ms, "latency_ms"),
            (ttft_ms, "ttft_ms"),
        ):
            _non_negative(value, name)
        if reservation_id and (done := await self._by_reservation(reservation_id)) is not None:
            return done

        created_ms = int(datetime.now(UTC).timestamp() * 1000)
        created_at = datetime.fromtimestamp(created_ms / 1000, UTC)
        try:
            async with self._sessions.begin() as session:
                reservation = None
                if reservation_id:
                    reservation = await session.get(ReservationRow, reservation_id)
                    if reservation is None:
                        log.warning(
                            "settling unknown reservation %s; recording anyway", reservation_id
                        )
                    else:
                        # The admitted principal is the one billed, whatever the caller says.
                        org_id, key_id = reservation.org_id, reservation.key_id
                        # Conditional, so a racing settle cannot move the first settle time.
                        await session.execute(
                            update(ReservationRow)
                            .where(
                                ReservationRow.id == reservation_id,
                                ReservationRow.settled_at.is_(None),
                            )
                            .values(settled_at=created_at)
                            .execution_options(synchronize_session=False)
                        )
                row = UsageRow(
                    id="usage_" + secrets.token_hex(12),
                    created_at=created_at,
                    created_ms=created_ms,
                    request_id=request_id or (reservation.request_id if reservation else ""),
                    reservation_id=reservation_id or None,
                    org_id=org_id,
                    key_id=key_id,
                    model=model,
                    model_digest=model_digest,
                    endpoint=endpoint or (reservation.endpoint if reservation else ""),
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    status=status,
                    latency_ms=latency_ms,
                    ttft_ms=ttft_ms,
                )
                session.add(row)
        except IntegrityError:
            # A concurrent settle of the same reservation won the unique constraint.
            if reservation_id and (done := await self._by_reservation(reservation_id)):
                return done
            raise
        return _record(row)

    async def _by_reservation(self, reservation_id: str) -> UsageRecord | None:
        async with self._sessions() as session:
            row = await session.scalar(
                select(UsageRow).where(UsageRow.reservation_id == reservation_id)
            )
        return _record(row) if row is not None else None

    async def query_usage(
        self, *, org_id: str = "", key_id: str = "", limit: int = 0
    ) -> list[UsageRecord]:
        """Usage records, newest first; empty filters match everything, 0 means the default."""
        if limit < 0:
            raise InvalidArgument("limit must not be negative", param="limit")
        limit = min(limit or DEFAULT_LIMIT, MAX_LIMIT)
        stmt = select(UsageRow).order_by(UsageRow.created_ms.desc(), UsageRow.id.desc())
        if org_id:
            stmt = stmt.where(UsageRow.org_id == org_id)
        if key_id:
            stmt = stmt.where(UsageRow.key_id == key_id)
        async with self._sessions() as session:
            rows = (await session.scalars(stmt.limit(limit))).all()
        return [_record(r) for r in rows]
