"""The metering gRPC service as callers see it: admit, settle, query, status codes, health."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

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
