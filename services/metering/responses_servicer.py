"""The `sluice.metering.v1.ResponseStoreService` gRPC servicer: decodes, calls `ResponseStore`,
encodes. Its errors are mapped to statuses by the server's one interceptor, as for metering's
other service."""

from __future__ import annotations

from dataclasses import asdict

import grpc

from services.metering.responses import ResponseStore, StoredResponse
from services.pb.metering.v1 import metering_pb2, metering_pb2_grpc

SERVICE_NAME = metering_pb2.DESCRIPTOR.services_by_name["ResponseStoreService"].full_name


def encode(stored: StoredResponse) -> metering_pb2.StoredResponse:
    return metering_pb2.StoredResponse(**asdict(stored))


def decode(message: metering_pb2.StoredResponse) -> StoredResponse:
    return StoredResponse(
        org_id=message.org_id,
        response_id=message.response_id,
        project_id=message.project_id,
        key_id=message.key_id,
        model=message.model,
        response_json=message.response_json or "{}",
        input_items_json=message.input_items_json or "[]",
        conversation_json=message.conversation_json or "[]",
    )


class ResponseStoreServicer(metering_pb2_grpc.ResponseStoreServiceServicer):
    def __init__(self, store: ResponseStore) -> None:
        self._store = store

    async def PutResponse(
        self, request: metering_pb2.PutResponseRequest, context: grpc.aio.ServicerContext
    ) -> metering_pb2.StoredResponse:
        return encode(await self._store.put(decode(request.response)))

    async def GetResponse(
        self, request: metering_pb2.GetResponseRequest, context: grpc.aio.ServicerContext
    ) -> metering_pb2.StoredResponse:
        stored = await self._store.get(
            request.org_id, request.response_id, include_items=request.include_items
        )
        return encode(stored)

    async def DeleteResponse(
        self, request: metering_pb2.DeleteResponseRequest, context: grpc.aio.ServicerContext
    ) -> metering_pb2.DeleteResponseResponse:
        await self._store.delete(request.org_id, request.response_id)
        return metering_pb2.DeleteResponseResponse()


def add_to_server(server: grpc.aio.Server, store: ResponseStore) -> None:
    metering_pb2_grpc.add_ResponseStoreServiceServicer_to_server(
        ResponseStoreServicer(store), server
    )
