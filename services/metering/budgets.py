"""Token budgets: one counter row per scope and period, reserved and charged in the database.

Every change is a conditional or relative UPDATE inside the caller's transaction (a synchronous
body run by `transactions.Transactions`), never a read followed by a write, so concurrent
admissions can never push a budget past its limit. Counters are always touched in one global
order (`SCOPE_ORDER`, then id) so that two transactions cannot wait on each other's rows (a
deadlock on PostgreSQL).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, Connection, and_, bindparam, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from services.common.ratelimits import format_reset
from services.metering.models import budget_counters
from services.metering.plans import Governing, Quota
from services.metering.refusals import Refusal
from services.metering.transactions import insert_if_missing

SCOPE_ORDER = ("key", "project", "org", "plan")
PERIOD_WORDS = {"day": "daily", "month": "monthly", "none": "lifetime"}
COUNTERS = budget_counters
KEYS = ("scope", "scope_id", "period", "period_start_ms")


def period_start(period: str, now: float) -> datetime | None:
    """The start of the current period in UTC (midnight, or the first of the month); None for
    "none" (a lifetime budget)."""
    if period == "none":
        return None
    t = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return t if period == "day" else t.replace(day=1)


def period_start_ms(period: str, now: float) -> int:
    start = period_start(period, now)
    return 0 if start is None else int(start.timestamp()) * 1000


def seconds_until_reset(period: str, now: float) -> int | None:
    """Whole seconds (>= 1) until the next period starts; None for a lifetime budget."""
    start = period_start(period, now)
    if start is None:
        return None
    if period == "day":
        end = start + timedelta(days=1)
    elif start.month == 12:
        end = start.replace(year=start.year + 1, month=1)
    else:
        end = start.replace(month=start.month + 1)
    return max(1, math.ceil(end.timestamp() - now))


@dataclass(frozen=True)
class Budget:
    """A token limit per period that applies to a request."""

    scope: str  # "key", "project", "org" or "plan" (an organization's plan quota)
    scope_id: str  # the key, project or organization id (the organization's, for a plan)
    period: str  # "day", "month" or "none"
    limit_tokens: int
    label: str  # how refusals name it


@dataclass(frozen=True)
class Hold:
    """Tokens a reservation holds on one counter row: exactly what settle or expiry gives back."""

    scope: str
    scope_id: str
    period: str
    period_start_ms: int
    tokens: int


@dataclass(frozen=True)
class BudgetState:
    """One counter as dashboards see it."""

    scope: str
    scope_id: str
    period: str
    period_start_ms: int
    limit_tokens: int
    used_tokens: int
    reserved_tokens: int


def encode_holds(holds: list[Hold]) -> str:
    rows = [[h.scope, h.scope_id, h.period, h.period_start_ms, h.tokens] for h in holds]
    return json.dumps(rows, separators=(",", ":"))


def decode_holds(text: str) -> list[Hold]:
    return [Hold(s, i, p, int(start), int(n)) for s, i, p, start, n in json.loads(text or "[]")]


def applicable(
    *, org_id: str, project_id: str, key_id: str, key_quota: Quota, governing: Governing
) -> list[Budget]:
    """The budgets a request of this principal counts against, in lock order."""
    found = []
    if key_quota.budget_tokens > 0:
        found.append(
            Budget("key", key_id, key_quota.budget_period, key_quota.budget_tokens, f"key {key_id}")
        )
    project = governing.project
    if project_id and project is not None and project.quota.budget_tokens > 0:
        q = project.quota
        found.append(
            Budget("project", project_id, q.budget_period, q.budget_tokens, f"project {project_id}")
        )
    org = governing.org
    if org is not None and org.quota.budget_tokens > 0:
        q = org.quota
        found.append(
            Budget("org", org_id, q.budget_period, q.budget_tokens, f"organization {org_id}")
        )
    plan = governing.plan
    if plan is not None and plan.monthly_tokens > 0:
        label = f"plan {plan.name} of organization {org_id}"
        found.append(Budget("plan", org_id, "month", plan.monthly_tokens, label))
    return found


def _pk(scope: str, scope_id: str, period: str, start_ms: int) -> ColumnElement[bool]:
    return and_(
        COUNTERS.c.scope == scope,
        COUNTERS.c.scope_id == scope_id,
        COUNTERS.c.period == period,
        COUNTERS.c.period_start_ms == start_ms,
    )


# The hot statements are built once with named parameters, so each compiles once and is cached.
_PK = and_(*(COUNTERS.c[k] == bindparam(f"k_{k}") for k in KEYS))
# The whole check: the row changes only if the reservation fits, atomically.
TAKE = (
    update(COUNTERS)
    .where(
        _PK,
        COUNTERS.c.used_tokens + COUNTERS.c.reserved_tokens + bindparam("n", type_=BigInteger)
        <= bindparam("lim", type_=BigInteger),
    )
    .values(
        reserved_tokens=COUNTERS.c.reserved_tokens + bindparam("n", type_=BigInteger),
        limit_tokens=bindparam("lim", type_=BigInteger),
    )
)
CHARGE = (
    update(COUNTERS)
    .where(_PK)
    .values(
        used_tokens=COUNTERS.c.used_tokens + bindparam("used", type_=BigInteger),
        reserved_tokens=COUNTERS.c.reserved_tokens - bindparam("back", type_=BigInteger),
    )
)
TAKEN = select(COUNTERS.c.used_tokens, COUNTERS.c.reserved_tokens).where(_PK)


def _keys(scope: str, scope_id: str, period: str, start_ms: int) -> dict[str, Any]:
    return {
        "k_scope": scope,
        "k_scope_id": scope_id,
        "k_period": period,
        "k_period_start_ms": start_ms,
    }


def reserve(conn: Connection, budgets: list[Budget], tokens: int, now: float) -> list[Hold]:
    """Holds `tokens` on every budget, or raises `Refusal` ("insufficient_quota").

    On a refusal the caller's transaction must roll back: holds already taken on earlier
    budgets are undone with it.
    """
    holds = []
    for budget in budgets:
        start_ms = period_start_ms(budget.period, now)
        keys = _keys(budget.scope, budget.scope_id, budget.period, start_ms)
        take = {**keys, "n": tokens, "lim": budget.limit_tokens}
        # The row exists except on a period's first request: try the UPDATE alone first.
        if conn.execute(TAKE, take).rowcount == 0:
            values = {
                "scope": budget.scope,
                "scope_id": budget.scope_id,
                "period": budget.period,
                "period_start_ms": start_ms,
                "limit_tokens": budget.limit_tokens,
                "used_tokens": 0,
                "reserved_tokens": 0,
            }
            conn.execute(insert_if_missing(conn, COUNTERS, values, KEYS))
            if conn.execute(TAKE, take).rowcount == 0:
                row = conn.execute(TAKEN, keys).one()
                raise _refusal(budget, row.used_tokens + row.reserved_tokens, tokens, now)
        holds.append(Hold(budget.scope, budget.scope_id, budget.period, start_ms, tokens))
    return holds


def _refusal(budget: Budget, taken: int, tokens: int, now: float) -> Refusal:
    left = max(0, budget.limit_tokens - taken)
    reset = seconds_until_reset(budget.period, now)
    message = (
        f"You exceeded your current quota: the {PERIOD_WORDS[budget.period]} token budget of "
        f"{budget.label} is {budget.limit_tokens} tokens, {left} are left, and this request "
        f"may use up to {tokens}."
    )
    if reset is not None:
        message += f" The budget resets in {format_reset(reset * 1000)}."
    return Refusal(message, code="insufficient_quota", retry_after=reset)


def settle(conn: Connection, holds: list[Hold], actual_tokens: int, *, release: bool) -> None:
    """Charges `actual_tokens` to every held counter and, when `release`, gives the holds back.

    The actual usage is charged even beyond what was reserved (and so beyond the limit): the
    tokens were produced, and losing usage is worse than a budget overshot by one request.
    The next admission against that budget is refused until it resets.
    """
    for hold in holds:
        keys = _keys(hold.scope, hold.scope_id, hold.period, hold.period_start_ms)
        back = hold.tokens if release else 0
        conn.execute(CHARGE, {**keys, "used": actual_tokens, "back": back})


def release(conn: Connection, holds: list[Hold]) -> None:
    """Gives the holds back without charging anything (an expired reservation)."""
    settle(conn, holds, 0, release=True)


async def read(conn: AsyncConnection, budgets: list[Budget], now: float) -> list[BudgetState]:
    """The current period's counter of each budget; zeros where nothing was admitted yet."""
    if not budgets:
        return []
    starts = [period_start_ms(b.period, now) for b in budgets]
    wanted = or_(
        *(_pk(b.scope, b.scope_id, b.period, s) for b, s in zip(budgets, starts, strict=True))
    )
    rows = (await conn.execute(select(COUNTERS).where(wanted))).mappings().all()
    found = {tuple(r[k] for k in KEYS): r for r in rows}
    states = []
    for budget, start in zip(budgets, starts, strict=True):
        row = found.get((budget.scope, budget.scope_id, budget.period, start))
        states.append(
            BudgetState(
                scope=budget.scope,
                scope_id=budget.scope_id,
                period=budget.period,
                period_start_ms=start,
                limit_tokens=budget.limit_tokens,
                used_tokens=row["used_tokens"] if row else 0,
                reserved_tokens=row["reserved_tokens"] if row else 0,
            )
        )
    return states
