"""The `sluice.metering.v1.MeteringService` gRPC servicer: decodes, calls `Ledger`, encodes.

Errors are not handled here: `services.common.grpc_server.ErrorInterceptor` maps the ledger's
domain exceptions to gRPC statuses in one place.
"""

from __future__ import annotations

import grpc

from services.metering.ledger import Ledger, UsageRecord
from services.pb.metering.v1 import metering_pb2, metering_pb2_grpc

SERVICE_NAME = metering_pb2.DESCRIPTOR.services_by_name["MeteringService"].full_name


def encode_record(r: UsageRecord) -> metering_pb2.UsageRecord:
    return metering_pb2.UsageRecord(
        id=r.id,
        created=r.created_ms // 1000,
        created_ms=r.created_ms,
        org_id=r.org_id,
        key_id=r.key_id,
        model=r.model,
        model_digest=r.model_digest,
        endpoint=r.endpoint,
        prompt_tokens=r.prompt_tokens,
        completion_tokens=r.completion_tokens,
        status=r.status,
        latency_ms=r.latency_ms,
        request_id=r.request_id,
        ttft_ms=r.ttft_ms,
    )


class MeteringServicer(metering_pb2_grpc.MeteringServiceServicer):
    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    async def Admit(
        self, request: metering_pb2.AdmitRequest, context: grpc.aio.ServicerContext
    ) -> metering_pb2.AdmitResponse:
        reservation_id = await self._ledger.admit(
            org_id=request.org_id,
            key_id=request.key_id,
            model=request.model,
            upper_bound_tokens=request.upper_bound_tokens,
            endpoint=request.endpoint,
            request_id=request.request_id,
        )
        return metering_pb2.AdmitResponse(reservation_id=reservation_id)

    async def Settle(
        self, request: metering_pb2.SettleRequest, context: grpc.aio.ServicerContext
    ) -> metering_pb2.SettleResponse:
        record = await self._ledger.settle(
            reservation_id=request.reservation_id,
            org_id=request.org_id,
            key_id=request.key_id,
            model=request.model,
            model_digest=request.model_digest,
            endpoint=request.endpoint,
            prompt_tokens=request.prompt_tokens,
            completion_tokens=request.completion_tokens,
            status=request.status,
            latency_ms=request.latency_ms,
            ttft_ms=request.ttft_ms,
            request_id=request.request_id,
        )
        return metering_pb2.SettleResponse(record=encode_record(record))

    async def QueryUsage(
        self, request: metering_pb2.QueryUsageRequest, context: grpc.aio.ServicerContext
    ) -> metering_pb2.QueryUsageResponse:
        records = await self._ledger.query_usage(
            org_id=request.org_id, key_id=request.key_id, limit=request.limit
        )
        return metering_pb2.QueryUsageResponse(records=[encode_record(r) for r in records])


def add_to_server(server: grpc.aio.Server, ledger: Ledger) -> None:
    metering_pb2_grpc.add_MeteringServiceServicer_to_server(MeteringServicer(ledger), server)
