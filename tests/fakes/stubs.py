"""In-memory stand-ins for the engine's collaborators in upstream tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

from services.engine.upstream.credentials import NoCredential, ProviderKey
from services.pb.engine.v1 import engine_pb2


class StubCredentials:
    """A `CredentialSource` over a dict {(org_id, provider): key}; counts key look-ups."""

    def __init__(self, keys: dict[tuple[str, str], str]) -> None:
        self.keys = keys
        self.lookups = 0

    async def providers(self, org_id: str) -> frozenset[str]:
        return frozenset(p for (org, p) in self.keys if org == org_id)

    async def api_key(self, org_id: str, provider: str) -> ProviderKey:
        self.lookups += 1
        try:
            return ProviderKey(self.keys[(org_id, provider)])
        except KeyError:
            raise NoCredential(provider) from None


def chat(model: str, *messages: tuple[str, str], **fields: object) -> engine_pb2.GenerateRequest:
    """A chat GenerateRequest; `fields` are GenerateRequest fields (sampling as a dict)."""
    req = engine_pb2.GenerateRequest(model=model, request_id="req-test", **fields)  # type: ignore[arg-type]
    for role, content in messages:
        req.messages.messages.add(role=role, content=content)
    return req


async def collect(
    stream: AsyncIterator[engine_pb2.GenerateResponse],
) -> list[engine_pb2.GenerateResponse]:
    return [msg async for msg in stream]
