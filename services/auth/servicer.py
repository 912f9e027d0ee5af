"""The `sluice.auth.v1.AuthService` gRPC servicer: decodes requests, calls `KeyStore`, encodes.

Errors are not handled here: `services.common.grpc_server.ErrorInterceptor` maps the store's
domain exceptions to gRPC statuses in one place.
"""

from __future__ import annotations

import grpc

from services.auth.store import KeyInfo, KeyStore
from services.pb.auth.v1 import auth_pb2, auth_pb2_grpc

SERVICE_NAME = auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name


def encode_key(info: KeyInfo) -> auth_pb2.KeyInfo:
    return auth_pb2.KeyInfo(
        id=info.id,
        org_name=info.org_name,
        name=info.name,
        fingerprint=info.fingerprint,
        created=int(info.created_at.timestamp()),
        revoked=info.revoked,
    )


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self, store: KeyStore) -> None:
        self._store = store

    async def Authenticate(
        self, request: auth_pb2.AuthenticateRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.Principal:
        # client_ip and model are accepted now so callers need not change when IP rules and
        # model scopes arrive; they do not affect the answer yet.
        p = await self._store.authenticate(request.api_key)
        return auth_pb2.Principal(
            org_id=p.org_id, org_name=p.org_name, key_id=p.key_id, key_name=p.key_name
        )

    async def CreateKey(
        self, request: auth_pb2.CreateKeyRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.CreateKeyResponse:
        info, secret = await self._store.create_key(request.org, request.name)
        return auth_pb2.CreateKeyResponse(key=encode_key(info), secret=secret)

    async def ListKeys(
        self, request: auth_pb2.ListKeysRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.ListKeysResponse:
        infos = await self._store.list_keys(request.org or None)
        return auth_pb2.ListKeysResponse(keys=[encode_key(i) for i in infos])

    async def RevokeKey(
        self, request: auth_pb2.RevokeKeyRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.KeyInfo:
        return encode_key(await self._store.revoke_key(request.key_id))


def add_to_server(server: grpc.aio.Server, store: KeyStore) -> None:
    auth_pb2_grpc.add_AuthServiceServicer_to_server(AuthServicer(store), server)
