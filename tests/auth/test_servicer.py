"""The auth gRPC service as callers see it: status codes, error metadata, health."""

from __future__ import annotations

import functools

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.auth import keys
from services.auth.servicer import SERVICE_NAME, add_to_server
from services.auth.store import KeyStore
from services.common.grpc_server import ERROR_CODE_KEY, ERROR_PARAM_KEY, start_server, stop_server
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


def _trailers(err: grpc.aio.AioRpcError) -> dict[str, str]:
    return {k: v for k, v in (err.trailing_metadata() or ()) if isinstance(v, str)}


async def test_orgs_and_projects_over_grpc(auth_addr: str) -> None:
    async with grpc.aio.insecure_channel(auth_addr) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        org = await stub.CreateOrg(auth_pb2.CreateOrgRequest(name="acme"))
        assert org.default_project_id.startswith("proj_") and org.created > 0
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CreateOrg(auth_pb2.CreateOrgRequest(name="acme"))
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS

        web = await stub.CreateProject(auth_pb2.CreateProjectRequest(org=org.id, name="web"))
        assert (web.org_name, web.name, web.is_default) == ("acme", "web", False)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CreateProject(auth_pb2.CreateProjectRequest(org="nobody", name="web"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND

        orgs = await stub.ListOrgs(auth_pb2.ListOrgsRequest())
        assert [o.id for o in orgs.orgs] == [org.id]
        projects = await stub.ListProjects(auth_pb2.ListProjectsRequest(org="acme"))
        assert [(p.name, p.is_default) for p in projects.projects] == [
            ("default", True),
            ("web", False),
        ]


async def test_key_policy_over_grpc(auth_addr: str) -> None:
    quota = auth_pb2.Quota(rpm=60, tpm=1000, max_concurrent=2, budget_tokens=5000)
    async with grpc.aio.insecure_channel(auth_addr) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        await stub.CreateOrg(auth_pb2.CreateOrgRequest(name="acme"))
        await stub.CreateProject(auth_pb2.CreateProjectRequest(org="acme", name="web"))
        created = await stub.CreateKey(
            auth_pb2.CreateKeyRequest(
                org="acme",
                name="k",
                project="web",
                allowed_models=["smollm2"],
                allowed_ips=["10.0.0.0/8", "2001:db8::1"],
                expires_in_seconds=3600,
                quota=quota,
            )
        )
        key = created.key
        assert (key.project_name, key.state) == ("web", "active")
        assert list(key.allowed_ips) == ["10.0.0.0/8", "2001:db8::1/128"]
        assert key.expires - key.created in (3599, 3600, 3601)
        assert key.quota.budget_period == "none" and key.quota.rpm == 60

        principal = await stub.Authenticate(
            auth_pb2.AuthenticateRequest(
                api_key=created.secret, client_ip="::ffff:10.1.1.1", model="smollm2@sha256:ab"
            )
        )
        assert (principal.project_id, principal.project_name) == (key.project_id, "web")
        assert principal.key_quota.tpm == 1000 and list(principal.allowed_models) == ["smollm2"]

        ids = {
            "sluice-org-id": key.org_id,
            "sluice-project-id": key.project_id,
            "sluice-key-id": key.id,
        }
        for ip, model, code in (
            ("203.0.113.9", "smollm2", "ip_not_allowed"),
            ("10.0.0.1", "gpt-4o", "model_not_allowed"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Authenticate(
                    auth_pb2.AuthenticateRequest(api_key=created.secret, client_ip=ip, model=model)
                )
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            trailers = _trailers(err.value)
            assert trailers[ERROR_CODE_KEY] == code
            assert {k: trailers[k] for k in ids} == ids
            assert created.secret not in (err.value.details() or "")

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CreateKey(
                auth_pb2.CreateKeyRequest(org="acme", name="k", allowed_ips=["nope"])
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _trailers(err.value)[ERROR_PARAM_KEY] == "allowed_ips"

        listed = await stub.ListKeys(auth_pb2.ListKeysRequest(org="acme", project="web"))
        assert [k.id for k in listed.keys] == [key.id]


async def test_rotate_over_grpc(auth_addr: str) -> None:
    async with grpc.aio.insecure_channel(auth_addr) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        created = await stub.CreateKey(auth_pb2.CreateKeyRequest(org="acme", name="k"))
        rotated = await stub.RotateKey(
            auth_pb2.RotateKeyRequest(key_id=created.secret, grace_seconds=300)
        )
        assert rotated.key.id == created.key.id and rotated.secret != created.secret
        assert rotated.key.previous_fingerprint == created.key.fingerprint
        assert rotated.key.previous_expires > 0
        for secret in (created.secret, rotated.secret):
            await stub.Authenticate(auth_pb2.AuthenticateRequest(api_key=secret))

        revoked = await stub.RevokeKey(auth_pb2.RevokeKeyRequest(key_id=rotated.secret))
        assert revoked.revoked and revoked.state == "revoked"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RotateKey(auth_pb2.RotateKeyRequest(key_id=created.key.id))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RotateKey(auth_pb2.RotateKeyRequest(key_id="key_0000000000000000"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_providers_over_grpc(auth_addr: str) -> None:
    api_key = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789"
    async with grpc.aio.insecure_channel(auth_addr) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        org = await stub.CreateOrg(auth_pb2.CreateOrgRequest(name="acme"))
        added = await stub.AddProvider(
            auth_pb2.AddProviderRequest(org="acme", provider="openai", api_key=api_key)
        )
        assert (added.name, added.fingerprint, added.org_id) == ("openai", "...6789", org.id)
        assert api_key not in str(added)
        listed = await stub.ListProviders(auth_pb2.ListProvidersRequest(org="acme"))
        assert [p.id for p in listed.providers] == [added.id]
        assert api_key not in str(listed)

        cred = await stub.GetProviderCredential(
            auth_pb2.GetProviderCredentialRequest(org_id=org.id, provider="openai")
        )
        assert (cred.id, cred.provider, cred.api_key) == (added.id, "openai", api_key)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetProviderCredential(
                auth_pb2.GetProviderCredentialRequest(org_id=org.id, provider="anthropic")
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert _trailers(err.value)[ERROR_CODE_KEY] == "provider_not_configured"

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.AddProvider(
                auth_pb2.AddProviderRequest(org="acme", provider="azure", api_key=api_key)
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert api_key not in (err.value.details() or "")

        removed = await stub.RemoveProvider(auth_pb2.RemoveProviderRequest(id=added.id))
        assert removed.id == added.id
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RemoveProvider(auth_pb2.RemoveProviderRequest(id=added.id))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_provider_rpcs_unavailable_without_a_provider_store(store: KeyStore) -> None:
    running = await start_server(
        "127.0.0.1:0", functools.partial(add_to_server, store=store), [SERVICE_NAME]
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ListProviders(auth_pb2.ListProvidersRequest())
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await stop_server(running, grace_s=0)
