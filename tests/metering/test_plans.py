"""Plans and policies on SQLite and PostgreSQL: the seeded plans, replacement, validation."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.errors import InvalidArgument, NotFound
from services.metering.ledger import Ledger
from services.metering.plans import Plan, PlanStore, Policy, Quota


async def test_the_seeded_plans(ledger: Ledger) -> None:
    assert await ledger.list_plans() == [
        Plan("business", 500_000_000, 3000, 5_000_000, 128, 0),
        Plan("free", 1_000_000, 60, 100_000, 4, 4096),
        Plan("team", 50_000_000, 600, 1_000_000, 32, 8192),
    ]


async def test_put_plan_creates_and_replaces(ledger: Ledger) -> None:
    assert await ledger.put_plan(Plan("pro", monthly_tokens=10, rpm=5)) == Plan("pro", 10, 5)
    await ledger.put_plan(Plan("pro", tpm=7))
    plans = {p.name: p for p in await ledger.list_plans()}
    assert plans["pro"] == Plan("pro", tpm=7)


@pytest.mark.parametrize(
    "plan",
    [Plan(""), Plan("no spaces"), Plan("x" * 65), Plan("ok", rpm=-1), Plan("ok", max_context=-5)],
)
async def test_put_plan_validates(ledger: Ledger, plan: Plan) -> None:
    with pytest.raises(InvalidArgument):
        await ledger.put_plan(plan)


async def test_policies_are_replaced_whole(ledger: Ledger) -> None:
    assert await ledger.get_policy("org", "org_1") == Policy("org", "org_1")
    set_ = await ledger.set_policy(
        Policy("org", "org_1", plan="team", quota=Quota(rpm=10, budget_tokens=5))
    )
    assert set_.quota.budget_period == "none"  # "" reads as "none"
    assert await ledger.get_policy("org", "org_1") == set_
    await ledger.set_policy(Policy("org", "org_1", quota=Quota(tpm=3)))
    assert await ledger.get_policy("org", "org_1") == Policy("org", "org_1", quota=Quota(tpm=3))
    project = Policy("project", "proj_1", quota=Quota(budget_tokens=9, budget_period="day"))
    assert await ledger.set_policy(project) == project
    assert await ledger.get_policy("project", "proj_1") == project


async def test_unknown_plan_is_not_found(ledger: Ledger) -> None:
    with pytest.raises(NotFound) as err:
        await ledger.set_policy(Policy("org", "org_1", plan="platinum"))
    assert err.value.code == "plan_not_found"
    assert await ledger.get_policy("org", "org_1") == Policy("org", "org_1")


@pytest.mark.parametrize(
    "policy",
    [
        Policy("team", "x"),
        Policy("org", ""),
        Policy("project", "p", plan="free"),
        Policy("org", "o", quota=Quota(budget_period="week")),
        Policy("org", "o", quota=Quota(max_concurrent=-1)),
    ],
)
async def test_set_policy_validates(ledger: Ledger, policy: Policy) -> None:
    with pytest.raises(InvalidArgument):
        await ledger.set_policy(policy)


async def test_get_policy_validates_the_scope(ledger: Ledger) -> None:
    with pytest.raises(InvalidArgument):
        await ledger.get_policy("key", "k")


async def test_another_process_changes_are_seen_within_the_cache_ttl(engine: AsyncEngine) -> None:
    now = [0.0]
    store = PlanStore(engine, cache_ttl_s=1.0, monotonic=lambda: now[0])
    other = PlanStore(engine)
    assert (await store.governing("org_1", "")).org is None
    await other.set_policy(Policy("org", "org_1", plan="free"))
    assert (await store.governing("org_1", "")).org is None  # still cached
    now[0] = 1.5
    governing = await store.governing("org_1", "")
    assert governing.plan is not None and governing.plan.name == "free"
    # This process's own writes apply at once.
    await store.set_policy(Policy("org", "org_1", plan="team"))
    governing = await store.governing("org_1", "")
    assert governing.plan is not None and governing.plan.name == "team"
