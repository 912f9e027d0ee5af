"""Plans and policies: what limits and budgets govern an organization and a project.

Admission reads them on every request, so `PlanStore.governing` keeps a short cache that this
process clears whenever it writes a plan or a policy: a change takes effect on the next admission.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.errors import InvalidArgument, NotFound
from services.common.quota import Quota
from services.metering.models import plans, policies
from services.metering.transactions import upsert, write_transaction

POLICY_SCOPES = ("org", "project")
PLAN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
CACHE_TTL_S = 1.0
CACHE_SIZE = 10_000


@dataclass(frozen=True)
class Plan:
    """A named plan: a monthly token quota per organization and ceilings over it."""

    name: str
    monthly_tokens: int = 0
    rpm: int = 0
    tpm: int = 0
    max_concurrent: int = 0
    max_context: int = 0


@dataclass(frozen=True)
class Policy:
    """An organization's or a project's plan (organizations only), limits and budget."""

    scope: str
    scope_id: str
    plan: str = ""
    quota: Quota = field(default_factory=Quota)


@dataclass(frozen=True)
class Governing:
    """The policies and plan that apply to one admission besides the key's own quota."""

    org: Policy | None = None
    project: Policy | None = None
    plan: Plan | None = None


def _plan(row: Mapping[Any, Any]) -> Plan:
    return Plan(
        name=row["name"],
        monthly_tokens=row["monthly_tokens"],
        rpm=row["rpm"],
        tpm=row["tpm"],
        max_concurrent=row["max_concurrent"],
        max_context=row["max_context"],
    )


def _policy(row: Mapping[Any, Any]) -> Policy:
    return Policy(
        scope=row["scope"],
        scope_id=row["scope_id"],
        plan=row["plan"] or "",
        quota=Quota(
            rpm=row["rpm"],
            tpm=row["tpm"],
            max_concurrent=row["max_concurrent"],
            budget_tokens=row["budget_tokens"],
            budget_period=row["budget_period"],
        ),
    )


class PlanStore:
    """Plans and policies in the database, with the admission path's short cache."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        cache_ttl_s: float = CACHE_TTL_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self._cache_ttl_s = cache_ttl_s
        self._monotonic = monotonic
        self._cache: dict[tuple[str, str], tuple[float, Governing]] = {}
        # Bumped by every write, so a read that raced a write is not cached after it.
        self._generation = 0

    async def governing(self, org_id: str, project_id: str) -> Governing:
        """The org's and project's policies and the org's plan; cached for `cache_ttl_s`.

        The TTL only bounds how long a change made by another process (an operator editing
        the database) goes unseen; this process's own writes clear the cache at once.
        """
        key = (org_id, project_id)
        now = self._monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        generation = self._generation
        wanted = and_(policies.c.scope == "org", policies.c.scope_id == org_id)
        if project_id:
            wanted = or_(
                wanted, and_(policies.c.scope == "project", policies.c.scope_id == project_id)
            )
        # One round trip: both policies and the org's plan.
        stmt = (
            select(policies, *(c.label(f"plan_{c.key}") for c in plans.c))
            .select_from(policies.outerjoin(plans, plans.c.name == policies.c.plan))
            .where(wanted)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        org = project = None
        plan = None
        for row in rows:
            if row["scope"] == "org":
                org = _policy(row)
                if row["plan_name"] is not None:
                    plan = _plan({c.key: row[f"plan_{c.key}"] for c in plans.c})
            else:
                project = _policy(row)
        governing = Governing(org=org, project=project, plan=plan)
        if generation == self._generation:
            if len(self._cache) >= CACHE_SIZE:
                self._cache.clear()
            self._cache[key] = (now + self._cache_ttl_s, governing)
        return governing

    def invalidate(self) -> None:
        self._generation += 1
        self._cache.clear()

    async def put_plan(self, plan: Plan) -> Plan:
        """Creates or replaces a plan; organizations on it see the change on their next request."""
        if not PLAN_NAME.match(plan.name):
            raise InvalidArgument(
                "plan name must be 1-64 characters: letters, digits, '_', '.', '-'",
                param="name",
            )
        for name in ("monthly_tokens", "rpm", "tpm", "max_concurrent", "max_context"):
            if getattr(plan, name) < 0:
                raise InvalidArgument(f"{name} must not be negative", param=name)
        values = {
            "name": plan.name,
            "monthly_tokens": plan.monthly_tokens,
            "rpm": plan.rpm,
            "tpm": plan.tpm,
            "max_concurrent": plan.max_concurrent,
            "max_context": plan.max_context,
        }
        async with write_transaction(self._engine) as conn:
            await conn.execute(upsert(conn, plans, values, ["name"]))
        self.invalidate()
        return plan

    async def list_plans(self) -> list[Plan]:
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(plans).order_by(plans.c.name))).mappings()
            return [_plan(row) for row in rows]

    async def set_policy(self, policy: Policy) -> Policy:
        """Replaces a scope's whole policy. NotFound ("plan_not_found") for an unknown plan."""
        _check_scope(policy.scope, policy.scope_id)
        quota = policy.quota.validated("quota")
        if policy.plan and policy.scope != "org":
            raise InvalidArgument("only an organization's policy may name a plan", param="plan")
        policy = replace(policy, quota=quota)
        values = {
            "scope": policy.scope,
            "scope_id": policy.scope_id,
            "plan": policy.plan or None,
            "rpm": quota.rpm,
            "tpm": quota.tpm,
            "max_concurrent": quota.max_concurrent,
            "budget_tokens": quota.budget_tokens,
            "budget_period": quota.budget_period,
        }
        async with write_transaction(self._engine) as conn:
            if policy.plan:
                known = await conn.scalar(select(plans.c.name).where(plans.c.name == policy.plan))
                if known is None:
                    raise NotFound(
                        f"no plan named {policy.plan!r}", code="plan_not_found", param="plan"
                    )
            await conn.execute(upsert(conn, policies, values, ["scope", "scope_id"]))
        self.invalidate()
        return policy

    async def get_policy(self, scope: str, scope_id: str) -> Policy:
        """The scope's policy, or an empty one (no plan, no limits) when none was set."""
        _check_scope(scope, scope_id)
        async with self._engine.connect() as conn:
            stmt = select(policies).where(
                policies.c.scope == scope, policies.c.scope_id == scope_id
            )
            row = (await conn.execute(stmt)).mappings().one_or_none()
        if row is None:
            return Policy(scope=scope, scope_id=scope_id)
        return _policy(row)


def _check_scope(scope: str, scope_id: str) -> None:
    if scope not in POLICY_SCOPES:
        raise InvalidArgument(f"scope must be one of {', '.join(POLICY_SCOPES)}", param="scope")
    if not scope_id:
        raise InvalidArgument("scope_id is required", param="scope_id")
