"""The metering gRPC service as callers see it: every RPC, refusals with their metadata, health."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.grpc_server import ERROR_CODE_KEY, RETRY_AFTER_KEY
from services.metering.servicer import SERVICE_NAME
from services.pb.metering.v1 import metering_pb2, metering_pb2_grpc


def settle_request(reservation_id: str, status: str = "ok") -> metering_pb2.SettleRequest:
    return metering_pb2.SettleRequest(
        reservation_id=reservation_id,
        org_id="org1",
        key_id="key_1",
        model="smollm2-135m-instruct",
        model_digest="sha256:" + "cd" * 32,
        endpoint="/v1/completions",
        prompt_tokens=5,
        completion_tokens=7,
        status=status,
        latency_ms=99.5,
        ttft_ms=9.5,
        request_id="req_9",
    )


async def test_admit_settle_query_round_trip(metering_addr: str) -> None:
    async with grpc.aio.insecure_channel(metering_addr) as channel:
        stub = metering_pb2_grpc.MeteringServiceStub(channel)
        admitted = await stub.Admit(
            metering_pb2.AdmitRequest(
                org_id="org1",
                key_id="key_1",
                model="smollm2-135m-instruct",
                upper_bound_tokens=64,
                endpoint="/v1/completions",
                request_id="req_9",
            )  # fmt: skip
        )
        settled = await stub.Settle(settle_request(admitted.reservation_id))
        again = await stub.Settle(settle_request(admitted.reservation_id, status="error"))
        assert again.record == settled.record
        record = settled.record
        assert (record.prompt_tokens, record.completion_tokens, record.status) == (5, 7, "ok")
        assert record.created == record.created_ms // 1000 > 0

        listed = await stub.QueryUsage(metering_pb2.QueryUsageRequest(org_id="org1"))
        assert [r.id for r in listed.records] == [record.id]


async def test_invalid_settle_is_invalid_argument(metering_addr: str) -> None:
    async with grpc.aio.insecure_channel(metering_addr) as channel:
        stub = metering_pb2_grpc.MeteringServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Settle(settle_request("res_x", status="maybe"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_health_reports_serving(metering_addr: str) -> None:
    async with grpc.aio.insecure_channel(metering_addr) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        resp = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


def admit_request(**overrides: Any) -> metering_pb2.AdmitRequest:
    fields: dict[str, Any] = {
        "org_id": "org1",
        "project_id": "proj1",
        "key_id": "key_1",
        "model": "smollm2-135m-instruct",
        "upper_bound_tokens": 64,
        "endpoint": "/v1/completions",
        "request_id": "req_1",
        "client_ip": "198.51.100.4",
        "provider": "sluice",
    }
    fields.update(overrides)
    return metering_pb2.AdmitRequest(**fields)


async def test_rate_limit_refusal_carries_retry_after_and_headers(metering_addr: str) -> None:
    async with grpc.aio.insecure_channel(metering_addr) as channel:
        stub = metering_pb2_grpc.MeteringServiceStub(channel)
        quota = metering_pb2.Quota(rpm=2, tpm=1000)
        first = await stub.Admit(admit_request(key_quota=quota))
        assert first.rate_limits == metering_pb2.RateLimitState(
            limit_requests=2,
            remaining_requests=1,
            reset_requests_ms=60_000,
            limit_tokens=1000,
            remaining_tokens=936,
            reset_tokens_ms=60_000,
        )
        assert first.reserved_tokens == 64 and first.max_context == 0
        await stub.Admit(admit_request(key_quota=quota))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Admit(admit_request(key_quota=quota, request_id="req_3"))
        listed = await stub.QueryUsage(metering_pb2.QueryUsageRequest())
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailing = dict(err.value.trailing_metadata() or ())
    assert trailing[ERROR_CODE_KEY] == "rate_limit_exceeded"
    assert trailing[RETRY_AFTER_KEY] == "60"
    assert trailing["x-ratelimit-limit-requests"] == "2"
    assert trailing["x-ratelimit-remaining-requests"] == "0"
    assert trailing["x-ratelimit-remaining-tokens"] == "872"
    assert "requests per minute (RPM)" in (err.value.details() or "")
    (rejected,) = listed.records
    assert (rejected.status, rejected.request_id, rejected.client_ip) == (
        "rejected",
        "req_3",
        "198.51.100.4",
    )


async def test_budget_refusal_is_insufficient_quota(metering_addr: str) -> None:
    async with grpc.aio.insecure_channel(metering_addr) as channel:
        stub = metering_pb2_grpc.MeteringServiceStub(channel)
        quota = metering_pb2.Quota(budget_tokens=100)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Admit(admit_request(key_quota=quota, upper_bound_tokens=101))
        budgets = await stub.GetBudgets(
            metering_pb2.GetBudgetsRequest(org_id="org1", key_id="key_1", key_quota=quota)
        )
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailing = dict(err.value.trailing_metadata() or ())
    assert trailing[ERROR_CODE_KEY] == "insufficient_quota"
    assert RETRY_AFTER_KEY not in trailing  # a lifetime budget does not come back
    assert list(budgets.budgets) == [
        metering_pb2.BudgetState(
            scope="key", scope_id="key_1", period="none", limit_tokens=100, used_tokens=0
        )
    ]


async def test_plans_and_policies(metering_addr: str) -> None:
    async with grpc.aio.insecure_channel(metering_addr) as channel:
        stub = metering_pb2_grpc.MeteringServiceStub(channel)
        pro = metering_pb2.Plan(name="pro", monthly_tokens=5000, rpm=1, max_context=32)
        assert await stub.PutPlan(pro) == pro
        names = [p.name for p in (await stub.ListPlans(metering_pb2.ListPlansRequest())).plans]
        assert names == ["business", "free", "pro", "team"]

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.SetPolicy(metering_pb2.Policy(scope="org", scope_id="org1", plan="gold"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert dict(err.value.trailing_metadata() or ())[ERROR_CODE_KEY] == "plan_not_found"

        policy = metering_pb2.Policy(
            scope="org", scope_id="org1", plan="pro", quota=metering_pb2.Quota(tpm=500)
        )
        stored = await stub.SetPolicy(policy)
        assert stored.quota.budget_period == "none"
        got = await stub.GetPolicy(metering_pb2.GetPolicyRequest(scope="org", scope_id="org1"))
        assert got == stored
        empty = await stub.GetPolicy(metering_pb2.GetPolicyRequest(scope="org", scope_id="x"))
        assert (empty.plan, empty.quota.rpm) == ("", 0)

        admitted = await stub.Admit(admit_request(upper_bound_tokens=100))
        assert (admitted.max_context, admitted.reserved_tokens) == (32, 32)
        assert admitted.rate_limits.limit_requests == 1
        assert admitted.rate_limits.limit_tokens == 500

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.SetPolicy(metering_pb2.Policy(scope="team", scope_id="t"))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_query_filter_and_summary(metering_addr: str) -> None:
    async with grpc.aio.insecure_channel(metering_addr) as channel:
        stub = metering_pb2_grpc.MeteringServiceStub(channel)
        for project, key in (("p1", "k1"), ("p2", "k2"), ("p1", "k2")):
            admitted = await stub.Admit(admit_request(project_id=project, key_id=key))
            req = settle_request(admitted.reservation_id)
            await stub.Settle(req)
        by_filter = await stub.QueryUsage(
            metering_pb2.QueryUsageRequest(filter=metering_pb2.UsageFilter(project_id="p1"))
        )
        assert sorted(r.key_id for r in by_filter.records) == ["k1", "k2"]
        assert {r.project_id for r in by_filter.records} == {"p1"}
        legacy = await stub.QueryUsage(metering_pb2.QueryUsageRequest(key_id="k2"))
        assert len(legacy.records) == 2
        summary = await stub.SummarizeUsage(
            metering_pb2.SummarizeUsageRequest(
                group_by="project", filter=metering_pb2.UsageFilter(org_id="org1")
            )
        )
    assert [(t.group, t.requests, t.total_tokens) for t in summary.totals] == [
        ("p1", 2, 24),
        ("p2", 1, 12),
    ]


async def test_renew_reservation_extends_it_until_settled(metering_addr: str) -> None:
    async with grpc.aio.insecure_channel(metering_addr) as channel:
        stub = metering_pb2_grpc.MeteringServiceStub(channel)
        admitted = await stub.Admit(
            metering_pb2.AdmitRequest(
                org_id="org1", key_id="key_1", model="m", upper_bound_tokens=8
            )
        )
        assert admitted.expires_ms > 0
        renewed = await stub.RenewReservation(
            metering_pb2.RenewReservationRequest(reservation_id=admitted.reservation_id)
        )
        assert renewed.expires_ms >= admitted.expires_ms
        await stub.Settle(settle_request(admitted.reservation_id))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RenewReservation(
                metering_pb2.RenewReservationRequest(reservation_id=admitted.reservation_id)
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        trailing = dict(err.value.trailing_metadata() or ())
        assert trailing[ERROR_CODE_KEY] == "reservation_not_open"
