"""Admission and settlement on SQLite and PostgreSQL: rate limits, ceilings, concurrency,
refusal records, the plan's context cap, and how settle and expiry give reservations back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.errors import InvalidArgument
from services.metering.ledger import Ledger
from services.metering.plans import Plan, Policy, Quota
from services.metering.ratelimit import Limiter
from services.metering.refusals import Refusal
from tests.metering.conftest import TTL_S, FakeClock


async def admit(ledger: Ledger, tokens: int = 100, **overrides: Any) -> Any:
    fields: dict[str, Any] = {
        "org_id": "org_1",
        "project_id": "proj_1",
        "key_id": "key_ab12",
        "model": "smollm2-135m-instruct",
        "upper_bound_tokens": tokens,
        "endpoint": "/v1/chat/completions",
        "request_id": "req_1",
        "client_ip": "203.0.113.7",
        "provider": "sluice",
    }
    fields.update(overrides)
    return await ledger.admit(**fields)


async def settle(ledger: Ledger, reservation_id: str, prompt: int, completion: int) -> Any:
    return await ledger.settle(
        reservation_id=reservation_id,
        org_id="org_1",
        key_id="key_ab12",
        model="smollm2-135m-instruct",
        prompt_tokens=prompt,
        completion_tokens=completion,
        status="ok",
    )


async def test_rpm_counts_down_then_refuses(ledger: Ledger, clock: FakeClock) -> None:
    quota = Quota(rpm=5)
    remaining = []
    for _ in range(5):
        admitted = await admit(ledger, key_quota=quota)
        remaining.append(admitted.rate_limits.remaining_requests)
        assert admitted.rate_limits.limit_requests == 5
        clock.advance(1)
    assert remaining == [4, 3, 2, 1, 0]
    with pytest.raises(Refusal) as err:
        await admit(ledger, key_quota=quota, request_id="req_6")
    exc = err.value
    assert exc.code == "rate_limit_exceeded"
    assert exc.retry_after == 55  # the first request leaves the window 55 s from now
    assert exc.message == (
        "Rate limit reached for requests per minute (RPM) on key key_ab12: "
        "Limit 5, Used 5, Requested 1. Please try again in 55s."
    )
    assert exc.metadata == {
        "x-ratelimit-limit-requests": "5",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "55s",
    }
    clock.advance(55)
    assert (await admit(ledger, key_quota=quota)).rate_limits.remaining_requests == 0


async def test_a_refusal_is_recorded_in_the_ledger(ledger: Ledger) -> None:
    await admit(ledger, key_quota=Quota(rpm=1))
    with pytest.raises(Refusal):
        await admit(ledger, key_quota=Quota(rpm=1), request_id="req_refused")
    (record,) = await ledger.query_usage()
    assert (record.status, record.request_id) == ("rejected", "req_refused")
    assert (record.org_id, record.project_id, record.key_id) == ("org_1", "proj_1", "key_ab12")
    assert (record.model, record.endpoint) == ("smollm2-135m-instruct", "/v1/chat/completions")
    assert (record.client_ip, record.provider) == ("203.0.113.7", "sluice")
    assert record.total_tokens == 0 and record.reservation_id is None


async def test_tpm_counts_the_reservation_until_settle(ledger: Ledger) -> None:
    quota = Quota(tpm=1000)
    first = await admit(ledger, 400, key_quota=quota)
    second = await admit(ledger, 400, key_quota=quota)
    assert (first.rate_limits.remaining_tokens, second.rate_limits.remaining_tokens) == (600, 200)
    with pytest.raises(Refusal) as err:
        await admit(ledger, 400, key_quota=quota)
    assert err.value.code == "rate_limit_exceeded"
    assert "tokens per minute (TPM)" in err.value.message
    assert err.value.metadata["x-ratelimit-remaining-tokens"] == "200"
    await settle(ledger, first.reservation_id, 20, 30)  # counts 50, not 400, from now on
    third = await admit(ledger, 400, key_quota=quota)
    assert third.rate_limits.remaining_tokens == 1000 - 50 - 400 - 400


async def test_concurrency_counts_admitted_unsettled_requests(ledger: Ledger) -> None:
    quota = Quota(max_concurrent=2)
    a = await admit(ledger, key_quota=quota)
    await admit(ledger, key_quota=quota)
    with pytest.raises(Refusal) as err:
        await admit(ledger, key_quota=quota)
    assert "concurrent requests" in err.value.message
    await settle(ledger, a.reservation_id, 1, 1)
    await admit(ledger, key_quota=quota)


async def test_key_org_and_plan_the_tightest_wins(ledger: Ledger) -> None:
    await ledger.put_plan(Plan(name="tiny", rpm=3))
    await ledger.set_policy(Policy("org", "org_1", plan="tiny", quota=Quota(rpm=4)))
    quota = Quota(rpm=10)
    states = [(await admit(ledger, key_quota=quota)).rate_limits for _ in range(3)]
    assert [(s.limit_requests, s.remaining_requests) for s in states] == [(3, 2), (3, 1), (3, 0)]
    with pytest.raises(Refusal) as err:
        await admit(ledger, key_quota=quota)
    assert "on plan tiny of organization org_1" in err.value.message

    # A plan change takes effect on the next admission; then the org's own limit is tightest.
    await ledger.put_plan(Plan(name="tiny", rpm=100))
    state = (await admit(ledger, key_quota=quota)).rate_limits
    assert (state.limit_requests, state.remaining_requests) == (4, 0)
    with pytest.raises(Refusal) as err:
        await admit(ledger, key_quota=quota)
    assert "on organization org_1" in err.value.message

    # Another key of the same organization shares the organization's window.
    with pytest.raises(Refusal):
        await admit(ledger, key_id="key_other")


async def test_a_project_policy_limits_its_project_only(ledger: Ledger) -> None:
    await ledger.set_policy(Policy("project", "proj_1", quota=Quota(rpm=1)))
    await admit(ledger)
    with pytest.raises(Refusal) as err:
        await admit(ledger)
    assert "on project proj_1" in err.value.message
    await admit(ledger, project_id="proj_2")


async def test_switching_plans_applies_at_once(ledger: Ledger) -> None:
    await ledger.set_policy(Policy("org", "org_1", plan="free"))
    assert (await admit(ledger)).rate_limits.limit_requests == 60
    await ledger.set_policy(Policy("org", "org_1", plan="team"))
    assert (await admit(ledger)).rate_limits.limit_requests == 600
    await ledger.set_policy(Policy("org", "org_1"))
    assert (await admit(ledger)).rate_limits.limit_requests == 0


async def test_the_plan_caps_the_reservation_at_its_context(ledger: Ledger) -> None:
    await ledger.set_policy(Policy("org", "org_1", plan="free"))
    admitted = await admit(ledger, 10_000)
    assert (admitted.max_context, admitted.reserved_tokens) == (4096, 4096)
    await ledger.set_policy(Policy("org", "org_1", plan="business"))  # max_context 0: no cap
    admitted = await admit(ledger, 10_000)
    assert (admitted.max_context, admitted.reserved_tokens) == (0, 10_000)


async def test_an_upstream_prompt_is_reserved_whole_beside_the_capped_completion(
    ledger: Ledger,
) -> None:
    # The provider counts the prompt and knows nothing of the plan: only the completion we ask
    # for can be capped, so the reservation must hold the prompt bound and the capped completion.
    await ledger.set_policy(Policy("org", "org_1", plan="free"))  # max_context 4096
    admitted = await admit(ledger, 10_000, prompt_bound_tokens=6_000, provider="openai")
    assert (admitted.max_context, admitted.reserved_tokens) == (4096, 6_000 + 4_000)
    admitted = await admit(ledger, 10_000, prompt_bound_tokens=1_000, provider="openai")
    assert admitted.reserved_tokens == 1_000 + 4096
    with pytest.raises(InvalidArgument):
        await admit(ledger, 10, prompt_bound_tokens=-1)


async def test_no_limits_reports_none(ledger: Ledger) -> None:
    admitted = await admit(ledger)
    assert admitted.rate_limits.limit_requests == admitted.rate_limits.limit_tokens == 0
    assert admitted.reserved_tokens == 100 and admitted.max_context == 0


async def test_a_budget_refusal_undoes_the_rate_limit_entries(ledger: Ledger) -> None:
    quota = Quota(rpm=5, budget_tokens=150, budget_period="day")
    assert (await admit(ledger, key_quota=quota)).rate_limits.remaining_requests == 4
    with pytest.raises(Refusal) as err:
        await admit(ledger, key_quota=quota)
    assert err.value.code == "insufficient_quota"
    # The refused request did not count, and the refusal carries the limits as they stood.
    assert err.value.metadata["x-ratelimit-remaining-requests"] == "4"
    assert (await admit(ledger, 10, key_quota=quota)).rate_limits.remaining_requests == 3


async def test_expired_reservations_give_everything_back(ledger: Ledger, clock: FakeClock) -> None:
    quota = Quota(max_concurrent=1, budget_tokens=1000, budget_period="none")
    stale = await admit(ledger, 800, key_quota=quota, request_id="req_stale")
    with pytest.raises(Refusal):
        await admit(ledger, 100, key_quota=quota)
    assert await ledger.expire_stale(now=clock() + TTL_S - 1) == 0
    clock.advance(TTL_S)
    assert await ledger.expire_stale(now=clock()) == 1
    assert await ledger.expire_stale(now=clock()) == 0

    (key_budget,) = await ledger.get_budgets(org_id="org_1", key_id="key_ab12", key_quota=quota)
    assert (key_budget.used_tokens, key_budget.reserved_tokens) == (0, 0)
    record, rejected = await ledger.query_usage()
    assert rejected.status == "rejected"
    assert (record.status, record.request_id, record.total_tokens) == ("expired", "req_stale", 0)
    assert record.created_ms == int(clock() * 1000)
    # The concurrency slot is free again.
    fresh = await admit(ledger, 100, key_quota=quota)
    await settle(ledger, fresh.reservation_id, 10, 10)

    # A settle arriving after expiry still records and charges, without releasing twice.
    late = await settle(ledger, stale.reservation_id, 100, 200)
    assert late.status == "ok" and late.total_tokens == 300
    (key_budget,) = await ledger.get_budgets(org_id="org_1", key_id="key_ab12", key_quota=quota)
    assert (key_budget.used_tokens, key_budget.reserved_tokens) == (320, 0)
    assert await settle(ledger, stale.reservation_id, 1, 1) == late
    statuses = sorted(r.status for r in await ledger.query_usage())
    assert statuses == ["expired", "ok", "ok", "rejected"]


async def test_a_restarted_metering_still_counts_requests_in_flight(
    ledger: Ledger, engine: AsyncEngine, clock: FakeClock, make_limiter: Callable[[], Limiter]
) -> None:
    quota = Quota(max_concurrent=1)
    await admit(ledger, key_quota=quota)
    clock.advance(TTL_S / 2)
    await admit(ledger, key_id="key_settled", key_quota=quota)
    # Another process: the memory limiter recounts from the database, Redis still holds them.
    restarted = Ledger(engine, clock=clock, reservation_ttl_s=TTL_S, limiter=make_limiter())
    clock.advance(TTL_S / 2)  # the first expires now, unswept; the second is still open
    await restarted.recover()
    await restarted.recover()  # a second recount counts nothing twice
    with pytest.raises(Refusal):
        await admit(restarted, key_id="key_settled", key_quota=quota)
    # key_ab12's reservation expired (not yet swept): it no longer counts.
    await admit(restarted, key_quota=quota)
    assert await restarted.expire_stale() == 1


async def test_settle_after_restart_releases_the_slot_once(
    ledger: Ledger, engine: AsyncEngine, clock: FakeClock, make_limiter: Callable[[], Limiter]
) -> None:
    quota = Quota(max_concurrent=1)
    held = await admit(ledger, key_quota=quota)
    restarted = Ledger(engine, clock=clock, reservation_ttl_s=TTL_S, limiter=make_limiter())
    await restarted.recover()
    await restarted.recover()
    with pytest.raises(Refusal):
        await admit(restarted, key_quota=quota)
    await settle(restarted, held.reservation_id, 1, 1)
    await admit(restarted, key_quota=quota)


async def test_settle_records_who_and_where_from_the_reservation(ledger: Ledger) -> None:
    admitted = await admit(ledger, provider="openai")
    record = await ledger.settle(
        reservation_id=admitted.reservation_id,
        org_id="org_other",
        key_id="key_other",
        project_id="proj_other",
        model="openai/gpt-4o-mini",
        prompt_tokens=3,
        completion_tokens=4,
        status="cancelled",
    )
    assert (record.org_id, record.project_id, record.key_id) == ("org_1", "proj_1", "key_ab12")
    assert (record.client_ip, record.provider, record.request_id) == (
        "203.0.113.7",
        "openai",
        "req_1",
    )
    assert record.status == "cancelled" and record.total_tokens == 7


async def test_invalid_key_quota_is_refused(ledger: Ledger) -> None:
    with pytest.raises(InvalidArgument):
        await admit(ledger, key_quota=Quota(budget_tokens=10, budget_period="week"))
    with pytest.raises(InvalidArgument):
        await admit(ledger, key_quota=Quota(rpm=-1))
