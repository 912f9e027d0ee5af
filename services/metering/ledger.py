"""Metering's domain entry point: the `Ledger` the servicer calls, and the usage queries.

`Ledger` puts together plans and policies (`plans`), admission and settlement (`admission`)
and reads of the usage records and budget counters. No gRPC here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from services.common.errors import InvalidArgument
from services.metering import budgets
from services.metering.admission import Admissions, Admitted
from services.metering.budgets import BudgetState
from services.metering.plans import PlanStore, Quota
from services.metering.ratelimit import Limiter
from services.metering.records import USAGE, UsageRecord, from_row

__all__ = ["Admitted", "BudgetState", "Ledger", "UsageRecord", "UsageTotal"]

DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000
DEFAULT_RESERVATION_TTL_S = 900.0
DAY_MS = 86_400_000
GROUPS = ("day", "key", "model", "project")


@dataclass(frozen=True)
class UsageTotal:
    """Totals of the records of one group (a UTC day "YYYY-MM-DD", a key, model or project)."""

    group: str
    requests: int
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def _filters(
    *, org_id: str, project_id: str, key_id: str, model: str, start_ms: int, end_ms: int
) -> list[ColumnElement[bool]]:
    """WHERE terms of a usage filter; empty fields match everything, the range is [start, end)."""
    if start_ms < 0 or end_ms < 0:
        raise InvalidArgument("start_ms and end_ms must not be negative", param="filter")
    terms = []
    for column, value in (
        (USAGE.c.org_id, org_id),
        (USAGE.c.project_id, project_id),
        (USAGE.c.key_id, key_id),
        (USAGE.c.model, model),
    ):
        if value:
            terms.append(column == value)
    if start_ms:
        terms.append(USAGE.c.created_ms >= start_ms)
    if end_ms:
        terms.append(USAGE.c.created_ms < end_ms)
    return terms


class Ledger:
    """Admission, settlement, plans, policies, budgets and the usage ledger over one database.

    `clock` (unix seconds) stamps records, places budget periods and drives the embedded
    rate-limit windows; tests pass a fake one. `limiter` keeps the windows elsewhere (Redis).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        clock: Callable[[], float] = time.time,
        reservation_ttl_s: float = DEFAULT_RESERVATION_TTL_S,
        limiter: Limiter | None = None,
    ) -> None:
        if reservation_ttl_s <= 0:
            raise ValueError("reservation_ttl_s must be positive")
        self._engine = engine
        self._clock = clock
        self.reservation_ttl_s = reservation_ttl_s
        self.plans = PlanStore(engine)
        self.admissions = Admissions(
            engine, self.plans, clock=clock, reservation_ttl_s=reservation_ttl_s, limiter=limiter
        )
        # The domain operations, as the servicer and tests call them.
        self.admit = self.admissions.admit
        self.settle = self.admissions.settle
        self.renew = self.admissions.renew
        self.expire_stale = self.admissions.expire_stale
        self.recover = self.admissions.recover
        self.put_plan = self.plans.put_plan
        self.list_plans = self.plans.list_plans
        self.set_policy = self.plans.set_policy
        self.get_policy = self.plans.get_policy

    def close(self) -> None:
        """Ends what the ledger holds besides the engine (SQLite's writer thread)."""
        self.admissions.close()

    async def aclose(self) -> None:
        """`close()`, and the rate limiter's connections."""
        self.close()
        await self.admissions.limiter.close()

    async def query_usage(
        self,
        *,
        org_id: str = "",
        project_id: str = "",
        key_id: str = "",
        model: str = "",
        start_ms: int = 0,
        end_ms: int = 0,
        limit: int = 0,
    ) -> list[UsageRecord]:
        """Usage records, newest first; empty filters match everything, 0 means the default."""
        if limit < 0:
            raise InvalidArgument("limit must not be negative", param="limit")
        limit = min(limit or DEFAULT_LIMIT, MAX_LIMIT)
        terms = _filters(
            org_id=org_id,
            project_id=project_id,
            key_id=key_id,
            model=model,
            start_ms=start_ms,
            end_ms=end_ms,
        )
        stmt = (
            select(USAGE)
            .where(*terms)
            .order_by(USAGE.c.created_ms.desc(), USAGE.c.id.desc())
            .limit(limit)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return [from_row(r) for r in rows]

    async def summarize_usage(
        self,
        group_by: str,
        *,
        org_id: str = "",
        project_id: str = "",
        key_id: str = "",
        model: str = "",
        start_ms: int = 0,
        end_ms: int = 0,
    ) -> list[UsageTotal]:
        """Request counts and token sums per group, ordered by group ("" reads as "day")."""
        group_by = group_by or "day"
        if group_by not in GROUPS:
            raise InvalidArgument(f"group_by must be one of {', '.join(GROUPS)}", param="group_by")
        terms = _filters(
            org_id=org_id,
            project_id=project_id,
            key_id=key_id,
            model=model,
            start_ms=start_ms,
            end_ms=end_ms,
        )
        # Days are bucketed by integer division in SQL, which both dialects do alike, and
        # formatted here; date functions differ between PostgreSQL and SQLite.
        group: ColumnElement[Any] = {
            "day": USAGE.c.created_ms // DAY_MS,
            "key": USAGE.c.key_id,
            "model": USAGE.c.model,
            "project": USAGE.c.project_id,
        }[group_by]
        stmt = (
            select(
                group.label("grp"),
                func.count().label("requests"),
                func.coalesce(func.sum(USAGE.c.prompt_tokens), 0).label("prompt"),
                func.coalesce(func.sum(USAGE.c.completion_tokens), 0).label("completion"),
            )
            .where(*terms)
            .group_by(group)
            .order_by(group)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [
            UsageTotal(
                group=_day(int(grp)) if group_by == "day" else str(grp),
                requests=int(requests),
                prompt_tokens=int(prompt),
                completion_tokens=int(completion),
            )
            for grp, requests, prompt, completion in rows
        ]

    async def get_budgets(
        self,
        *,
        org_id: str,
        project_id: str = "",
        key_id: str = "",
        key_quota: Quota | None = None,
    ) -> list[BudgetState]:
        """The current period's counter of every budget that applies to this principal."""
        if not org_id:
            raise InvalidArgument("org_id is required", param="org_id")
        quota = (key_quota or Quota()).validated("key_quota")
        if not key_id:
            quota = Quota()
        governing = await self.plans.governing(org_id, project_id)
        wanted = budgets.applicable(
            org_id=org_id,
            project_id=project_id,
            key_id=key_id,
            key_quota=quota,
            governing=governing,
        )
        async with self._engine.connect() as conn:
            return await budgets.read(conn, wanted, self._clock())


def _day(index: int) -> str:
    return datetime.fromtimestamp(index * DAY_MS / 1000, UTC).date().isoformat()
