"""In-memory stand-ins for the edge's collaborators in provider tests."""

from __future__ import annotations

from services.edge.providers.credentials import NoCredential, ProviderKey


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
