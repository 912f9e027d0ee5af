"""The auth gRPC service as callers see it: status codes, error metadata, health."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.auth import keys
from services.auth.servicer import SERVICE_NAME
from services.common.grpc_server import ERROR_CODE_KEY
from services.pb.auth.v1 import auth_pb2, auth_pb2_grpc


async def test_bad_key_is_unauthenticated_with_error_code(auth_addr: str) -> None:
    bad = keys.generate_key()
    async with grpc.aio.insecure_channel(auth_addr) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Authenticate(auth_pb2.AuthenticateRequest(api_key=bad), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert (ERROR_CODE_KEY, "invalid_api_key") in tuple(err.value.trailing_metadata() or ())
    assert bad not in (err.value.details() or "")


async def test_health_reports_serving(auth_addr: str) -> None:
    async with grpc.aio.insecure_channel(auth_addr) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in (SERVICE_NAME, ""):
            resp = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING


async def test_create_authenticate_list_revoke_over_grpc(auth_addr: str) -> None:
    async with grpc.aio.insecure_channel(auth_addr) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        created = await stub.CreateKey(auth_pb2.CreateKeyRequest(org="acme", name="web"))
        assert keys.is_well_formed(created.secret)
        assert created.key.created > 0 and not created.key.revoked

        principal = await stub.Authenticate(
            auth_pb2.AuthenticateRequest(api_key=created.secret, client_ip="10.0.0.1")
        )
        assert (principal.org_name, principal.key_id) == ("acme", created.key.id)

        listed = await stub.ListKeys(auth_pb2.ListKeysRequest(org="acme"))
        assert [k.id for k in listed.keys] == [created.key.id]
        assert all(created.secret not in str(k) for k in listed.keys)

        revoked = await stub.RevokeKey(auth_pb2.RevokeKeyRequest(key_id=created.key.id))
        assert revoked.revoked
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Authenticate(auth_pb2.AuthenticateRequest(api_key=created.secret))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_revoke_unknown_is_not_found_and_bad_names_invalid(auth_addr: str) -> None:
    async with grpc.aio.insecure_channel(auth_addr) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RevokeKey(auth_pb2.RevokeKeyRequest(key_id="key_nope"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CreateKey(auth_pb2.CreateKeyRequest(org="", name="x"))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
