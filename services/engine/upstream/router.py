"""The engine's entry to upstream models: resolving, listing and generating for "openai/<model>"
and "anthropic/<model>" with the requesting organization's own provider credential."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

from services.common.errors import InvalidArgument, NotFound
from services.common.settings import Settings
from services.engine.upstream.anthropic import AnthropicBackend
from services.engine.upstream.base import UpstreamBackend
from services.engine.upstream.catalog import ANTHROPIC, OPENAI, Catalog, UpstreamModel, parse
from services.engine.upstream.credentials import CredentialSource, NoCredential, ProviderKey
from services.engine.upstream.openai import OpenAIBackend
from services.pb.engine.v1 import engine_pb2


def http_client(base_url: str, settings: Settings) -> httpx.AsyncClient:
    """The one HTTP client of a backend (connection pool shared by all its requests)."""
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=httpx.Timeout(
            settings.upstream_read_timeout_s, connect=settings.upstream_connect_timeout_s
        ),
        # A redirect could send the provider key to another host.
        follow_redirects=False,
        headers={"user-agent": "sluice-engine"},
    )


class UpstreamRouter:
    """Upstream models behind the same calls as hosted ones (see `EngineServicer`)."""

    def __init__(
        self,
        catalog: Catalog,
        credentials: CredentialSource,
        backends: dict[str, UpstreamBackend],
    ) -> None:
        self.catalog = catalog
        self.credentials = credentials
        self.backends = backends

    @classmethod
    def from_settings(cls, settings: Settings, credentials: CredentialSource) -> UpstreamRouter:
        """Backends for both providers, each with its own client on the configured base URL."""
        retries = settings.upstream_max_retries
        return cls(
            Catalog.from_settings(settings),
            credentials,
            {
                OPENAI: OpenAIBackend(
                    http_client(settings.openai_base_url, settings), max_retries=retries
                ),
                ANTHROPIC: AnthropicBackend(
                    http_client(settings.anthropic_base_url, settings),
                    max_retries=retries,
                    default_max_tokens=settings.anthropic_default_max_tokens,
                ),
            },
        )

    async def aclose(self) -> None:
        for backend in self.backends.values():
            await backend.client.aclose()

    async def resolve(self, ref: str, org_id: str) -> engine_pb2.ModelInfo:
        model = parse(ref)
        if model.provider not in await self.credentials.providers(org_id):
            raise _no_credential(model)
        return self.catalog.info(model)

    async def list_models(self, org_id: str) -> list[engine_pb2.ModelInfo]:
        """The configured models of every provider the organization has a credential for."""
        return self.catalog.listed_models(await self.credentials.providers(org_id))

    async def generate(
        self, req: engine_pb2.GenerateRequest
    ) -> AsyncIterator[engine_pb2.GenerateResponse]:
        model = parse(req.model)
        key = await self._key(req.org_id, model)
        backend = self.backends[model.provider]
        limits = self.catalog.limits(model)
        async for msg in backend.generate(req, model, limits, self.catalog.info(model), key):
            yield msg

    def count_tokens(self, ref: str) -> engine_pb2.CountTokensResponse:
        raise InvalidArgument(
            f"Token counting is not available for '{ref}': the provider counts its tokens.",
            param="model",
        )

    async def _key(self, org_id: str, model: UpstreamModel) -> ProviderKey:
        try:
            return await self.credentials.api_key(org_id, model.provider)
        except NoCredential:
            raise _no_credential(model) from None


def _no_credential(model: UpstreamModel) -> NotFound:
    return NotFound(
        f"The model '{model.name}' is not available: the organization has no {model.provider} "
        f"credential; an administrator can add one with `sluice providers add`.",
        code="model_not_found",
        param="model",
    )
