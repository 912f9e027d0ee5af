"""Admission and settlement: rate limits in a `Limiter`, budgets and reservations in one
transaction.

Admit checks and records the request in the rate-limit windows (one atomic step of the
limiter: in memory, or one Redis script), then holds its upper bound of tokens on every budget
and writes the reservation, in one database transaction. Settle charges the actual usage,
releases the holds and writes the usage record in one transaction committed before it returns,
then corrects the windows. Reservations that are never settled expire: their holds go back and
an "expired" record is written. A long request renews its reservation to keep it.

Nothing here is per-process state that several metering replicas would need to share: budgets,
reservations and records are rows, and closing a reservation is one conditional UPDATE, so
exactly one of any number of concurrent settles and sweepers (on any replica) gives its holds
back. The windows are per-process only with the embedded `MemoryLimiter` (one replica).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.errors import InvalidArgument, NotFound, Unavailable
from services.common.sqltypes import UTCDateTime
from services.metering import budgets
from services.metering.memory_limits import MemoryLimiter
from services.metering.models import reservations
from services.metering.plans import Governing, PlanStore, Quota
from services.metering.ratelimit import (
    Limiter,
    LimiterUnavailable,
    Limits,
    RateLimitState,
    Scope,
    request_scopes,
)
from services.metering.records import (
    SETTLE_STATUSES,
    USAGE,
    UsageRecord,
    from_row,
    insert_values,
    new_record,
    unreserved_record_id,
)
from services.metering.refusals import Refusal
from services.metering.transactions import Transactions

log = logging.getLogger(__name__)

RESERVATIONS = reservations
# Built once: values go in as parameters, so the compiled statement is cached and reused.
INSERT_RESERVATION = insert(RESERVATIONS)
INSERT_USAGE = insert(USAGE)
CLOSE_RESERVATION = (
    update(RESERVATIONS)
    .where(RESERVATIONS.c.id == bindparam("rid"), RESERVATIONS.c.settled_at.is_(None))
    .values(settled_at=bindparam("closed_at", type_=UTCDateTime()))
)
# Closing an open reservation returns what settle needs in the same round trip.
SETTLED_FIELDS = (
    "org_id", "project_id", "key_id", "endpoint", "request_id", "client_ip", "provider", "holds",
)  # fmt: skip
# Renewing extends an open, unexpired reservation and names its principal (for its leases).
RENEW_RESERVATION = (
    update(RESERVATIONS)
    .where(
        RESERVATIONS.c.id == bindparam("rid"),
        RESERVATIONS.c.settled_at.is_(None),
        RESERVATIONS.c.expires_at > bindparam("now", type_=UTCDateTime()),
    )
    .values(expires_at=bindparam("expires_at", type_=UTCDateTime()))
    .returning(RESERVATIONS.c.org_id, RESERVATIONS.c.project_id, RESERVATIONS.c.key_id)
)
CLOSE_AND_READ = CLOSE_RESERVATION.returning(*(RESERVATIONS.c[f] for f in SETTLED_FIELDS))
READ_RESERVATION = select(RESERVATIONS).where(RESERVATIONS.c.id == bindparam("rid"))
EXPIRE_BATCH = 500
# What an "expired" record copies from its reservation.
EXPIRED_RECORD_FIELDS = (
    "org_id", "project_id", "key_id", "model", "endpoint", "request_id", "client_ip", "provider",
)  # fmt: skip


@dataclass(frozen=True)
class Admitted:
    """An admitted request: its reservation and the rate-limit values to show the client."""

    reservation_id: str
    rate_limits: RateLimitState
    max_context: int  # the organization's plan's context cap; 0 = none
    reserved_tokens: int
    expires_at: float = 0.0  # unix seconds: when it expires unless settled or renewed


def _require(value: str, name: str) -> None:
    if not value:
        raise InvalidArgument(f"{name} is required", param=name)


def _non_negative(value: float, name: str) -> None:
    if value < 0:
        raise InvalidArgument(f"{name} must not be negative", param=name)


def _utc(now: float) -> datetime:
    return datetime.fromtimestamp(now, UTC)


def rate_limits(
    *, org_id: str, project_id: str, key_id: str, key_quota: Quota, governing: Governing
) -> list[Limits]:
    """The windows a request counts in: its key, project, organization and the org's plan."""
    found = [
        Limits(
            "key", key_id, f"key {key_id}", key_quota.rpm, key_quota.tpm, key_quota.max_concurrent
        )
    ]
    if project_id and governing.project is not None:
        q = governing.project.quota
        found.append(
            Limits("project", project_id, f"project {project_id}", q.rpm, q.tpm, q.max_concurrent)
        )
    if governing.org is not None:
        q = governing.org.quota
        label = f"organization {org_id}"
        found.append(Limits("org", org_id, label, q.rpm, q.tpm, q.max_concurrent))
    plan = governing.plan
    if plan is not None:
        # The plan is a ceiling over the whole organization, whatever its own policy says.
        label = f"plan {plan.name} of organization {org_id}"
        found.append(Limits("plan", org_id, label, plan.rpm, plan.tpm, plan.max_concurrent))
    return [lim for lim in found if lim.active]


def _unavailable(exc: LimiterUnavailable) -> Unavailable:
    return Unavailable(f"rate limits unavailable ({exc}); try again", code="service_unavailable")


class Admissions:
    """Admit, settle, renew and expire reservations; the windows live in `limiter`
    (the embedded `MemoryLimiter` on `clock` unless one is given)."""

    def __init__(
        self,
        engine: AsyncEngine,
        plans: PlanStore,
        *,
        clock: Callable[[], float],
        reservation_ttl_s: float,
        limiter: Limiter | None = None,
    ) -> None:
        self._engine = engine
        self._tx = Transactions(engine)
        self._plans = plans
        self._clock = clock
        self._ttl_s = reservation_ttl_s
        self.limiter = limiter if limiter is not None else MemoryLimiter(clock)

    @property
    def _lease_ms(self) -> int:
        # A concurrency slot lasts as long as the reservation: both end together unless renewed.
        return int(self._ttl_s * 1000)

    def close(self) -> None:
        self._tx.close()

    async def _correct(self, what: str, reservation_id: str, step: Awaitable[None]) -> None:
        """Runs a window correction after the ledger committed; a failure is logged, not raised:
        the record is what must not be lost, and the limiter's entries end by themselves."""
        try:
            await step
        except LimiterUnavailable as exc:
            log.warning("could not %s %s in the rate limits: %s", what, reservation_id, exc)

    async def admit(
        self,
        *,
        org_id: str,
        key_id: str,
        model: str,
        upper_bound_tokens: int,
        endpoint: str = "",
        request_id: str = "",
        project_id: str = "",
        key_quota: Quota | None = None,
        client_ip: str = "",
        provider: str = "",
        prompt_bound_tokens: int = 0,
    ) -> Admitted:
        """Admits a request or raises `Refusal` (after writing a "rejected" record).

        The plan's max_context caps the reservation: the whole request when the engine enforces
        it, or only the completion part when `prompt_bound_tokens` says the prompt is counted by
        an upstream provider (which then gets a completion cap, not the plan).
        """
        _require(org_id, "org_id")
        _require(key_id, "key_id")
        _require(model, "model")
        _non_negative(upper_bound_tokens, "upper_bound_tokens")
        _non_negative(prompt_bound_tokens, "prompt_bound_tokens")
        quota = (key_quota or Quota()).validated("key_quota")
        governing = await self._plans.governing(org_id, project_id)
        max_context = governing.plan.max_context if governing.plan else 0
        reserve = upper_bound_tokens
        if max_context > 0:
            prompt = min(prompt_bound_tokens, upper_bound_tokens)
            reserve = prompt + min(upper_bound_tokens - prompt, max_context)
        principal = {"org_id": org_id, "project_id": project_id, "key_id": key_id}
        limits = rate_limits(key_quota=quota, governing=governing, **principal)
        holds_wanted = budgets.applicable(key_quota=quota, governing=governing, **principal)
        refused: dict[str, Any] = {
            **principal,
            "model": model,
            "endpoint": endpoint,
            "request_id": request_id,
            "client_ip": client_ip,
            "provider": provider,
        }

        reservation_id = "res_" + secrets.token_hex(12)
        state = RateLimitState()
        scopes: list[Scope] = [(lim.scope, lim.scope_id) for lim in limits]
        if limits:
            try:
                state = await self.limiter.acquire(
                    reservation_id, org_id, limits, reserve, self._lease_ms
                )
            except LimiterUnavailable as exc:
                raise _unavailable(exc) from None
            except Refusal:
                await self._record_refusal(refused, self._clock())
                raise
        now = self._clock()
        row = {
            "id": reservation_id,
            "org_id": org_id,
            "key_id": key_id,
            "project_id": project_id,
            "model": model,
            "endpoint": endpoint,
            "request_id": request_id,
            "client_ip": client_ip,
            "provider": provider,
            "upper_bound_tokens": upper_bound_tokens,
            "reserved_tokens": reserve,
            "created_at": _utc(now),
            "expires_at": _utc(now + self._ttl_s),
            "settled_at": None,
        }

        def hold_and_record(conn: Connection) -> None:
            holds = budgets.reserve(conn, holds_wanted, reserve, now)
            conn.execute(INSERT_RESERVATION, {**row, "holds": budgets.encode_holds(holds)})

        try:
            # Its first statement writes (a budget UPDATE or the reservation INSERT).
            await self._tx.run(hold_and_record, write_first=True)
        except BaseException as exc:
            if limits:
                await self._correct(
                    "undo", reservation_id, self.limiter.undo(reservation_id, org_id, scopes)
                )
            if isinstance(exc, Refusal):
                # Without the limiter, the refusal stands without the rate-limit values.
                with contextlib.suppress(LimiterUnavailable):
                    exc.metadata.update((await self.limiter.state(org_id, limits)).headers())
                await self._record_refusal(refused, now)
            raise
        return Admitted(reservation_id, state, max_context, reserve, now + self._ttl_s)

    async def _record_refusal(self, fields: dict[str, Any], now: float) -> None:
        """Writes the "rejected" record of a refused admission; a failure is logged, not raised,
        so the caller still gets the refusal rather than an internal error."""
        record = new_record(now=now, reservation_id=None, status="rejected", **fields)

        def insert_record(conn: Connection) -> None:
            conn.execute(INSERT_USAGE, insert_values(record))

        try:
            await self._tx.run(insert_record, write_first=True)
        except Exception:  # noqa: BLE001 - the refusal matters more than its record
            log.exception("could not record a refused request %s", fields.get("request_id"))

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
        project_id: str = "",
        client_ip: str = "",
        provider: str = "",
    ) -> UsageRecord:
        """Charges the actual usage, releases the holds and writes the record, durably.

        Settling a reservation again returns the first record unchanged. An unknown
        reservation id is logged and its usage still recorded: losing usage is worse than an
        odd record. An empty `reservation_id` (a request refused before admission) is
        idempotent per organization and `request_id` instead (the record's id derives from
        them; without a request id there is nothing to recognise a repeat by). A reservation
        that already expired gave its holds back then; its late settle charges the usage
        without giving them back twice.
        """
        if status not in SETTLE_STATUSES:
            raise InvalidArgument(
                f"status must be one of {', '.join(sorted(SETTLE_STATUSES))}", param="status"
            )
        for value, name in (
            (prompt_tokens, "prompt_tokens"),
            (completion_tokens, "completion_tokens"),
            (latency_ms, "latency_ms"),
            (ttft_ms, "ttft_ms"),
        ):
            _non_negative(value, name)
        now = self._clock()
        actual = prompt_tokens + completion_tokens
        fields: dict[str, Any] = {
            "org_id": org_id,
            "project_id": project_id,
            "key_id": key_id,
            "endpoint": endpoint,
            "request_id": request_id,
            "client_ip": client_ip,
            "provider": provider,
        }

        # The principal of a reservation this settle closed: its windows are corrected after.
        closed: list[tuple[str, str, str]] = []
        # A settle without a reservation is recognised again by its record's id.
        record_id = (
            "" if reservation_id or not request_id else unreserved_record_id(org_id, request_id)
        )

        def charge(conn: Connection) -> UsageRecord:
            closed.clear()
            if reservation_id:
                # Conditional, so exactly one of settle and expiry gives the holds back.
                close = {"rid": reservation_id, "closed_at": _utc(now)}
                res = conn.execute(CLOSE_AND_READ, close).mappings().one_or_none()
                release = res is not None
                if res is None:
                    # Already closed (expired) or unknown: read what there is.
                    read = {"rid": reservation_id}
                    res = conn.execute(READ_RESERVATION, read).mappings().one_or_none()
                if res is None:
                    log.warning("settling unknown reservation %s; recording anyway", reservation_id)
                else:
                    # The admitted principal is the one billed, whatever the caller says.
                    for name in ("org_id", "project_id", "key_id"):
                        fields[name] = res[name]
                    for name in ("endpoint", "request_id", "client_ip", "provider"):
                        fields[name] = fields[name] or res[name]
                    holds = budgets.decode_holds(res["holds"])
                    budgets.settle(conn, holds, actual, release=release)
                    if release:
                        closed.append((res["org_id"], res["project_id"], res["key_id"]))
            record = new_record(
                now=now,
                reservation_id=reservation_id or None,
                model=model,
                model_digest=model_digest,
                status=status,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                latency_ms=latency_ms,
                ttft_ms=ttft_ms,
                **fields,
            )
            if record_id:
                record = dataclasses.replace(record, id=record_id)
            conn.execute(INSERT_USAGE, insert_values(record))
            return record

        try:
            record = await self._tx.run(charge, write_first=True)
        except IntegrityError:
            # This reservation (or this unreserved request) was settled before, or by a
            # concurrent settle: the unique record constraint refused this one, and its
            # transaction, charge included, was rolled back. Repeats are rare (retries), so the
            # common path does not pay a read to look for them first.
            if reservation_id and (done := await self.by_reservation(reservation_id)):
                return done
            if record_id and (done := await self.by_id(record_id)):
                return done
            raise
        for org, project, key in closed:
            scopes = request_scopes(org, project, key)
            await self._correct(
                "settle", reservation_id, self.limiter.settle(reservation_id, org, scopes, actual)
            )
        return record

    async def renew(self, reservation_id: str) -> float:
        """Extends an open reservation by the reservation lifetime from now: its holds stay and
        its concurrency slots are renewed. Returns when it now expires (unix seconds).

        Raises `NotFound` when it is settled, expired or unknown; `Unavailable` when the
        rate-limit store cannot be reached (the reservation itself was extended).
        """
        _require(reservation_id, "reservation_id")
        now = self._clock()
        expires = now + self._ttl_s
        params = {"rid": reservation_id, "now": _utc(now), "expires_at": _utc(expires)}

        def extend(conn: Connection) -> tuple[str, str, str] | None:
            row = conn.execute(RENEW_RESERVATION, params).one_or_none()
            return None if row is None else (row[0], row[1], row[2])

        principal = await self._tx.run(extend, write_first=True)
        if principal is None:
            raise NotFound(
                f"reservation {reservation_id} is not open (settled, expired or unknown)",
                code="reservation_not_open",
                param="reservation_id",
            )
        org, project, key = principal
        try:
            await self.limiter.renew(
                reservation_id, org, request_scopes(org, project, key), self._lease_ms
            )
        except LimiterUnavailable as exc:
            raise _unavailable(exc) from None
        return expires

    async def by_id(self, record_id: str) -> UsageRecord | None:
        async with self._engine.connect() as conn:
            row = (
                (await conn.execute(select(USAGE).where(USAGE.c.id == record_id)))
                .mappings()
                .one_or_none()
            )
        return from_row(row) if row is not None else None

    async def by_reservation(self, reservation_id: str) -> UsageRecord | None:
        async with self._engine.connect() as conn:
            row = (
                (await conn.execute(select(USAGE).where(USAGE.c.reservation_id == reservation_id)))
                .mappings()
                .one_or_none()
            )
        return from_row(row) if row is not None else None

    async def expire_stale(self, now: float | None = None) -> int:
        """Closes reservations past their expiry that were never settled; returns how many.

        Each gives its holds back (nothing is charged), leaves the concurrency windows and gets
        an "expired" record with zero tokens. The record has no reservation id, so a settle
        that arrives later still records its usage (and charges it).
        """
        now = self._clock() if now is None else now
        expired = 0
        while True:
            async with self._engine.connect() as conn:
                rows = (
                    (
                        await conn.execute(
                            select(RESERVATIONS)
                            .where(
                                RESERVATIONS.c.settled_at.is_(None),
                                RESERVATIONS.c.expires_at <= _utc(now),
                            )
                            .order_by(RESERVATIONS.c.expires_at)
                            .limit(EXPIRE_BATCH)
                        )
                    )
                    .mappings()
                    .all()
                )
            done = 0
            for res in rows:
                try:
                    done += await self._expire(res, now)
                except Exception:  # noqa: BLE001 - one bad row must not block the others
                    log.exception("could not expire reservation %s", res["id"])
            expired += done
            # A full batch that made no progress would only be read again: leave it to the
            # next sweep.
            if len(rows) < EXPIRE_BATCH or not done:
                break
        await self.limiter.compact()
        return expired

    async def _expire(self, row: Mapping[Any, Any], now: float) -> int:
        reservation_id = row["id"]

        # One transaction per reservation: a batch would hold many counters' locks at once and
        # could deadlock with settles taking them in another order.
        def release(conn: Connection) -> int:
            closed = conn.execute(
                CLOSE_RESERVATION, {"rid": reservation_id, "closed_at": _utc(now)}
            )
            if closed.rowcount == 0:
                return 0  # settled meanwhile
            budgets.release(conn, budgets.decode_holds(row["holds"]))
            record = new_record(
                now=now,
                reservation_id=None,
                status="expired",
                **{name: row[name] for name in EXPIRED_RECORD_FIELDS},
            )
            conn.execute(INSERT_USAGE, insert_values(record))
            return 1

        if not await self._tx.run(release, write_first=True):
            return 0
        scopes = request_scopes(row["org_id"], row["project_id"], row["key_id"])
        await self._correct(
            "release", reservation_id, self.limiter.release(reservation_id, row["org_id"], scopes)
        )
        log.info("reservation %s expired unsettled; its holds were released", reservation_id)
        return 1

    async def recover(self) -> int:
        """Counts open, unexpired reservations as in flight (after a restart); returns how many."""
        now = self._clock()
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(
                        RESERVATIONS.c.id,
                        RESERVATIONS.c.org_id,
                        RESERVATIONS.c.project_id,
                        RESERVATIONS.c.key_id,
                    ).where(
                        RESERVATIONS.c.settled_at.is_(None),
                        RESERVATIONS.c.expires_at > _utc(now),
                    )
                )
            ).all()
        return await self.limiter.recover(
            (rid, org_id, request_scopes(org_id, project_id, key_id))
            for rid, org_id, project_id, key_id in rows
        )
