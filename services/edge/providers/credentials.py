"""An organization's provider credentials, read from the auth service with a short cache.

Provider keys are decrypted by auth and handed only to the edge, which calls the provider. They
stay in this process's memory for at most `ttl_s` seconds (a timer drops each entry), are
wrapped so that no repr, str or log line shows them, and leave the process only in the upstream
request's header.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import grpc

from services.edge.errors import APIError
from services.pb.auth.v1 import auth_pb2, auth_pb2_grpc

AUTH_TIMEOUT_S = 5.0


class ProviderKey:
    """A provider secret that never prints itself; `reveal()` is for the request header only."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "ProviderKey(***)"

    __str__ = __repr__


class NoCredential(LookupError):
    """The organization has no credential for the provider."""

    def __init__(self, provider: str) -> None:
        super().__init__(provider)
        self.provider = provider


class CredentialSource(Protocol):
    """Where the upstream backends get an organization's provider credentials."""

    async def providers(self, org_id: str) -> frozenset[str]:
        """The providers the organization has a credential for."""
        ...

    async def api_key(self, org_id: str, provider: str) -> ProviderKey:
        """The organization's key for `provider`; raises `NoCredential` when it has none."""
        ...


@dataclass
class _Cached:
    expires: float
    value: ProviderKey | frozenset[str] | None = field(repr=False)
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)


class AuthCredentials:
    """`CredentialSource` over the auth service's ListProviders / GetProviderCredential RPCs.

    Keys are cached for `ttl_s` (a removed or replaced credential stops being used within that
    time); "no credential" and provider listings for `listing_ttl_s`, so that a newly added
    credential is picked up quickly.
    """

    def __init__(
        self,
        stub: auth_pb2_grpc.AuthServiceStub,
        *,
        ttl_s: float = 30.0,
        listing_ttl_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stub = stub
        self.ttl_s = ttl_s
        self.listing_ttl_s = listing_ttl_s
        self.clock = clock
        self._cache: dict[tuple[str, str], _Cached] = {}

    async def providers(self, org_id: str) -> frozenset[str]:
        if not org_id:
            # ListProviders with an empty org lists every organization's credentials.
            return frozenset()
        cache_key = ("providers", org_id)
        hit = self._lookup(cache_key)
        if hit is not None and isinstance(hit.value, frozenset):
            return hit.value
        try:
            resp = await self.stub.ListProviders(
                auth_pb2.ListProvidersRequest(org=org_id), timeout=AUTH_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return frozenset()
            raise _unavailable(exc) from None
        names = frozenset(p.provider for p in resp.providers)
        self._put(cache_key, names, self.listing_ttl_s)
        return names

    async def api_key(self, org_id: str, provider: str) -> ProviderKey:
        if not org_id:
            raise NoCredential(provider)
        cache_key = (f"key:{provider}", org_id)
        hit = self._lookup(cache_key)
        if hit is not None:
            if isinstance(hit.value, ProviderKey):
                return hit.value
            raise NoCredential(provider)
        try:
            cred = await self.stub.GetProviderCredential(
                auth_pb2.GetProviderCredentialRequest(org_id=org_id, provider=provider),
                timeout=AUTH_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                self._put(cache_key, None, self.listing_ttl_s)
                raise NoCredential(provider) from None
            raise _unavailable(exc) from None
        key = ProviderKey(cred.api_key)
        self._put(cache_key, key, self.ttl_s)
        return key

    def __len__(self) -> int:
        """Entries cached now (keys, "no credential" answers and provider listings)."""
        return len(self._cache)

    def clear(self) -> None:
        """Drops every cached entry (and so every key) now; called on shutdown."""
        for entry in self._cache.values():
            if entry.timer is not None:
                entry.timer.cancel()
        self._cache.clear()

    def _lookup(self, cache_key: tuple[str, str]) -> _Cached | None:
        """The live cache entry (its value may be None: "no credential"), or None."""
        entry = self._cache.get(cache_key)
        if entry is not None and self.clock() >= entry.expires:
            self._drop(cache_key, entry)
            return None
        return entry

    def _put(
        self, cache_key: tuple[str, str], value: ProviderKey | frozenset[str] | None, ttl: float
    ) -> None:
        old = self._cache.get(cache_key)
        if old is not None:
            self._drop(cache_key, old)
        entry = _Cached(self.clock() + ttl, value)
        # The timer removes the entry even if nobody asks again, so a key does not linger.
        entry.timer = asyncio.get_running_loop().call_later(ttl, self._drop, cache_key, entry)
        self._cache[cache_key] = entry

    def _drop(self, cache_key: tuple[str, str], entry: _Cached) -> None:
        if entry.timer is not None:
            entry.timer.cancel()
        if self._cache.get(cache_key) is entry:
            del self._cache[cache_key]


def _unavailable(exc: grpc.aio.AioRpcError) -> APIError:
    return APIError(
        503,
        f"The organization's provider credential could not be read from the auth service "
        f"({exc.code().name}); try again shortly.",
        type="service_unavailable",
        code="auth_unavailable",
        headers={"retry-after": "1"},
    )
