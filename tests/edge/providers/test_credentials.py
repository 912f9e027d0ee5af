"""Reading provider credentials from auth over gRPC, and how long they stay cached."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from services.common.errors import NotFound
from services.common.grpc_server import RunningServer, start_server, stop_server
from services.edge.errors import APIError
from services.edge.providers.credentials import AuthCredentials, NoCredential, ProviderKey
from services.pb.auth.v1 import auth_pb2, auth_pb2_grpc


class FakeAuth(auth_pb2_grpc.AuthServiceServicer):
    """The two RPCs the engine uses, over a dict {(org_id, provider): key}."""

    def __init__(self) -> None:
        self.keys: dict[tuple[str, str], str] = {}
        self.calls: list[str] = []

    async def ListProviders(  # noqa: N802
        self, request: auth_pb2.ListProvidersRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.ListProvidersResponse:
        self.calls.append(f"list:{request.org}")
        return auth_pb2.ListProvidersResponse(
            providers=[
                auth_pb2.ProviderInfo(org_id=org, provider=p, fingerprint="..." + key[-4:])
                for (org, p), key in self.keys.items()
                if org == request.org
            ]
        )

    async def GetProviderCredential(  # noqa: N802
        self, request: auth_pb2.GetProviderCredentialRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.ProviderCredential:
        self.calls.append(f"get:{request.org_id}:{request.provider}")
        key = self.keys.get((request.org_id, request.provider))
        if key is None:
            raise NotFound("no credential")
        return auth_pb2.ProviderCredential(id="pc1", provider=request.provider, api_key=key)


@pytest.fixture
async def auth() -> AsyncIterator[tuple[FakeAuth, auth_pb2_grpc.AuthServiceStub]]:
    servicer = FakeAuth()
    running: RunningServer = await start_server(
        "127.0.0.1:0",
        lambda server: auth_pb2_grpc.add_AuthServiceServicer_to_server(servicer, server),
        ["sluice.auth.v1.AuthService"],
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        yield servicer, auth_pb2_grpc.AuthServiceStub(channel)
    finally:
        await channel.close()
        await stop_server(running, grace_s=0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_keys_are_cached_for_the_ttl(
    auth: tuple[FakeAuth, auth_pb2_grpc.AuthServiceStub],
) -> None:
    servicer, stub = auth
    servicer.keys[("org-a", "openai")] = "sk-first"
    clock = Clock()
    creds = AuthCredentials(stub, ttl_s=30, clock=clock)
    key = await creds.api_key("org-a", "openai")
    assert isinstance(key, ProviderKey)
    assert key.reveal() == "sk-first"
    servicer.keys[("org-a", "openai")] = "sk-second"
    clock.now += 29
    assert (await creds.api_key("org-a", "openai")).reveal() == "sk-first"
    clock.now += 2
    assert (await creds.api_key("org-a", "openai")).reveal() == "sk-second"
    assert servicer.calls == ["get:org-a:openai"] * 2
    creds.clear()


async def test_missing_credential_and_listing(
    auth: tuple[FakeAuth, auth_pb2_grpc.AuthServiceStub],
) -> None:
    servicer, stub = auth
    servicer.keys[("org-a", "anthropic")] = "sk-ant-x"
    creds = AuthCredentials(stub)
    with pytest.raises(NoCredential):
        await creds.api_key("org-a", "openai")
    assert await creds.providers("org-a") == frozenset({"anthropic"})
    assert await creds.providers("org-b") == frozenset()
    # An empty org would list every organization's credentials: never asked.
    assert await creds.providers("") == frozenset()
    with pytest.raises(NoCredential):
        await creds.api_key("", "openai")
    assert "list:" not in servicer.calls
    creds.clear()


async def test_cached_keys_leave_memory_when_their_time_is_up(
    auth: tuple[FakeAuth, auth_pb2_grpc.AuthServiceStub],
) -> None:
    servicer, stub = auth
    servicer.keys[("org-a", "openai")] = "sk-short-lived"
    creds = AuthCredentials(stub, ttl_s=0.05, listing_ttl_s=0.05)
    await creds.api_key("org-a", "openai")
    await creds.providers("org-a")
    assert len(creds) == 2
    for _ in range(100):
        if not len(creds):
            break
        await asyncio.sleep(0.02)
    assert len(creds) == 0
    assert "sk-short-lived" not in repr(creds.__dict__)


async def test_auth_down_is_unavailable() -> None:
    channel = grpc.aio.insecure_channel("127.0.0.1:1")
    try:
        creds = AuthCredentials(auth_pb2_grpc.AuthServiceStub(channel))
        with pytest.raises(APIError) as err:
            await creds.api_key("org-a", "openai")
        assert (err.value.status, err.value.code) == (503, "auth_unavailable")
    finally:
        await channel.close()


def test_provider_key_never_prints_itself() -> None:
    key = ProviderKey("sk-secret-value")
    assert "sk-secret-value" not in f"{key} {key!r} {[key]}"
