"""Token budgets on SQLite and PostgreSQL: periods, every scope, refusals, rollover, and a race
that must never overshoot."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from typing import Any

import pytest

from services.metering.budgets import period_start_ms, seconds_until_reset
from services.metering.ledger import Ledger
from services.metering.plans import Plan, Policy, Quota
from services.metering.refusals import Refusal
from tests.metering.conftest import FakeClock


def ts(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()  # type: ignore[misc]


@pytest.mark.parametrize(
    ("period", "now", "start", "reset"),
    [
        ("day", ts(2025, 3, 14, 12), ts(2025, 3, 14), 12 * 3600),
        ("day", ts(2025, 3, 14), ts(2025, 3, 14), 24 * 3600),
        ("month", ts(2025, 3, 14, 12), ts(2025, 3, 1), 17 * 86400 + 12 * 3600),
        ("month", ts(2025, 12, 31, 23, 59, 59), ts(2025, 12, 1), 1),
        ("none", ts(2025, 3, 14, 12), 0, None),
    ],
)
def test_periods(period: str, now: float, start: float, reset: int | None) -> None:
    assert period_start_ms(period, now) == int(start * 1000)
    assert seconds_until_reset(period, now) == reset


async def admit(ledger: Ledger, tokens: int, **overrides: Any) -> Any:
    fields: dict[str, Any] = {
        "org_id": "org_1",
        "project_id": "proj_1",
        "key_id": "key_1",
        "model": "m",
        "upper_bound_tokens": tokens,
    }
    fields.update(overrides)
    return await ledger.admit(**fields)


async def settle(ledger: Ledger, reservation_id: str, total: int) -> Any:
    return await ledger.settle(
        reservation_id=reservation_id,
        org_id="org_1",
        key_id="key_1",
        model="m",
        prompt_tokens=total // 2,
        completion_tokens=total - total // 2,
        status="ok",
    )


async def budget(ledger: Ledger, scope: str, key_quota: Quota | None = None) -> Any:
    states = await ledger.get_budgets(
        org_id="org_1", project_id="proj_1", key_id="key_1", key_quota=key_quota
    )
    (state,) = [s for s in states if s.scope == scope]
    return state


async def test_key_daily_budget_refuses_then_resets_at_midnight(
    ledger: Ledger, clock: FakeClock
) -> None:
    quota = Quota(budget_tokens=1000, budget_period="day")
    first = await admit(ledger, 600, key_quota=quota)
    state = await budget(ledger, "key", quota)
    assert (state.limit_tokens, state.used_tokens, state.reserved_tokens) == (1000, 0, 600)
    assert state.period == "day" and state.period_start_ms == period_start_ms("day", clock())
    with pytest.raises(Refusal) as err:
        await admit(ledger, 600, key_quota=quota)
    exc = err.value
    assert exc.code == "insufficient_quota"
    assert exc.retry_after == 12 * 3600  # the fake clock stands at noon UTC
    assert "daily token budget of key key_1" in exc.message and "400 are left" in exc.message
    await settle(ledger, first.reservation_id, 250)
    state = await budget(ledger, "key", quota)
    assert (state.used_tokens, state.reserved_tokens) == (250, 0)
    await admit(ledger, 600, key_quota=quota)  # 250 used + 600 fits now

    clock.advance(12 * 3600)  # midnight: a new day, a new counter
    state = await budget(ledger, "key", quota)
    assert (state.used_tokens, state.reserved_tokens) == (0, 0)
    await admit(ledger, 1000, key_quota=quota)


async def test_project_monthly_budget(ledger: Ledger, clock: FakeClock) -> None:
    await ledger.set_policy(
        Policy("project", "proj_1", quota=Quota(budget_tokens=500, budget_period="month"))
    )
    await admit(ledger, 500)
    with pytest.raises(Refusal) as err:
        await admit(ledger, 1)
    assert "monthly token budget of project proj_1" in err.value.message
    assert err.value.retry_after == 17 * 86400 + 12 * 3600
    await admit(ledger, 400, project_id="proj_2")  # another project's budget is its own
    clock.advance(18 * 86400)  # April
    await admit(ledger, 500)


async def test_org_lifetime_budget_has_no_retry_after(ledger: Ledger, clock: FakeClock) -> None:
    await ledger.set_policy(Policy("org", "org_1", quota=Quota(budget_tokens=300)))
    await settle(ledger, (await admit(ledger, 300)).reservation_id, 300)
    with pytest.raises(Refusal) as err:
        await admit(ledger, 1, key_id="key_2", project_id="proj_9")
    assert err.value.retry_after is None
    assert "lifetime token budget of organization org_1" in err.value.message
    clock.advance(400 * 86400)
    with pytest.raises(Refusal):
        await admit(ledger, 1)
    state = await budget(ledger, "org")
    assert (state.period, state.period_start_ms, state.used_tokens) == ("none", 0, 300)


async def test_plan_monthly_quota(ledger: Ledger) -> None:
    await ledger.put_plan(Plan(name="mini", monthly_tokens=1000))
    await ledger.set_policy(Policy("org", "org_1", plan="mini"))
    await admit(ledger, 900)
    with pytest.raises(Refusal) as err:
        await admit(ledger, 200, key_id="key_2")
    assert "monthly token budget of plan mini of organization org_1" in err.value.message
    state = await budget(ledger, "plan")
    assert (state.scope_id, state.period, state.limit_tokens) == ("org_1", "month", 1000)
    # Raising the quota applies to the next admission, with the same counter.
    await ledger.put_plan(Plan(name="mini", monthly_tokens=2000))
    await admit(ledger, 200, key_id="key_2")
    state = await budget(ledger, "plan")
    assert (state.limit_tokens, state.reserved_tokens) == (2000, 1100)


async def test_every_budget_must_hold_and_a_refusal_holds_nothing(ledger: Ledger) -> None:
    quota = Quota(budget_tokens=10_000, budget_period="day")
    await ledger.set_policy(Policy("org", "org_1", quota=Quota(budget_tokens=100)))
    with pytest.raises(Refusal):
        await admit(ledger, 200, key_quota=quota)
    # The key's budget was tried first; the refusal rolled its hold back too.
    assert (await budget(ledger, "key", quota)).reserved_tokens == 0
    assert (await budget(ledger, "org")).reserved_tokens == 0


async def test_get_budgets_lists_what_applies(ledger: Ledger) -> None:
    await ledger.set_policy(Policy("org", "org_1", plan="free", quota=Quota(budget_tokens=5)))
    await ledger.set_policy(
        Policy("project", "proj_1", quota=Quota(budget_tokens=7, budget_period="day"))
    )
    states = await ledger.get_budgets(
        org_id="org_1",
        project_id="proj_1",
        key_id="key_1",
        key_quota=Quota(budget_tokens=9, budget_period="month"),
    )
    assert [(s.scope, s.scope_id, s.period, s.limit_tokens) for s in states] == [
        ("key", "key_1", "month", 9),
        ("project", "proj_1", "day", 7),
        ("org", "org_1", "none", 5),
        ("plan", "org_1", "month", 1_000_000),
    ]
    assert all(s.used_tokens == s.reserved_tokens == 0 for s in states)


async def test_usage_beyond_the_reservation_is_charged(ledger: Ledger) -> None:
    quota = Quota(budget_tokens=1000, budget_period="none")
    admitted = await admit(ledger, 100, key_quota=quota)
    await settle(ledger, admitted.reservation_id, 1200)  # losing usage is worse than overshoot
    state = await budget(ledger, "key", quota)
    assert (state.used_tokens, state.reserved_tokens) == (1200, 0)
    with pytest.raises(Refusal):
        await admit(ledger, 0, key_quota=quota)


async def test_settle_after_rollover_releases_the_old_period(
    ledger: Ledger, clock: FakeClock
) -> None:
    quota = Quota(budget_tokens=1000, budget_period="day")
    clock.advance(12 * 3600 - 1)  # 23:59:59
    admitted = await admit(ledger, 800, key_quota=quota)
    clock.advance(2)
    await settle(ledger, admitted.reservation_id, 100)
    today = await budget(ledger, "key", quota)
    assert (today.used_tokens, today.reserved_tokens) == (0, 0)
    clock.advance(-2)
    yesterday = await budget(ledger, "key", quota)
    assert (yesterday.used_tokens, yesterday.reserved_tokens) == (100, 0)


async def test_settling_twice_charges_once(ledger: Ledger) -> None:
    quota = Quota(budget_tokens=1000)
    admitted = await admit(ledger, 100, key_quota=quota)
    records = await asyncio.gather(*(settle(ledger, admitted.reservation_id, 80) for _ in range(5)))
    assert len({r.id for r in records}) == 1
    state = await budget(ledger, "key", quota)
    assert (state.used_tokens, state.reserved_tokens) == (80, 0)


async def test_race_never_overshoots(ledger: Ledger) -> None:
    """100 concurrent admit-then-settle requests against a budget that admits only a few."""
    limit = 1000
    quota = Quota(budget_tokens=limit, budget_period="month")
    await ledger.set_policy(
        Policy("project", "proj_1", quota=Quota(budget_tokens=limit, budget_period="day"))
    )
    rng = random.Random(7)

    async def one(i: int) -> tuple[str, int]:
        upper = rng.randint(150, 300)
        try:
            admitted = await admit(ledger, upper, key_quota=quota, request_id=f"req_{i}")
        except Refusal as exc:
            return exc.code, 0
        await asyncio.sleep(0)
        # Each uses at most what it reserved; what it did not use goes back to the budget.
        used = rng.randint(1, upper)
        await settle(ledger, admitted.reservation_id, used)
        return "ok", used

    results = await asyncio.gather(*(one(i) for i in range(100)))
    served = [n for outcome, n in results if outcome == "ok"]
    refusals = [outcome for outcome, _ in results if outcome != "ok"]
    assert served and refusals
    assert set(refusals) == {"insufficient_quota"}
    assert sum(served) <= limit

    records = await ledger.query_usage(limit=1000)
    assert sum(r.total_tokens for r in records) == sum(served)
    assert sum(r.status == "rejected" for r in records) == len(refusals)
    assert sum(r.status == "ok" for r in records) == len(served)
    for scope in ("key", "project"):
        state = await budget(ledger, scope, quota)
        assert state.used_tokens == sum(served) and state.reserved_tokens == 0


async def test_concurrent_admissions_reserve_exactly_what_fits(ledger: Ledger) -> None:
    await ledger.set_policy(Policy("org", "org_1", quota=Quota(budget_tokens=1000)))

    async def one(i: int) -> bool:
        try:
            await admit(ledger, 100, key_id=f"key_{i}")
        except Refusal:
            return False
        return True

    admitted = await asyncio.gather(*(one(i) for i in range(100)))
    assert sum(admitted) == 10
    state = await budget(ledger, "org")
    assert (state.used_tokens, state.reserved_tokens) == (0, 1000)
