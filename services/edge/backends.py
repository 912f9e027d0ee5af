"""What the edge talks to, opened in the app's lifespan: gRPC clients of auth and metering, the
engines (services.edge.engines), the HTTP clients of the organizations' providers
(bring-your-own-key models), and what keeps the edge's promises to metering: settlements with
their outbox and the renewal of open reservations."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import httpx
from starlette.requests import Request

from services.common.channels import aio_channel
from services.common.settings import Settings
from services.common.tracing import Tracing
from services.edge.client_ip import IPNetwork, parse_networks
from services.edge.drain import Drain
from services.edge.engines import EnginePool, EnginePoolCollector, no_engine_error
from services.edge.errors import APIError, from_grpc
from services.edge.leases import Leases
from services.edge.meter import MeterCalls, MeterStreams
from services.edge.metrics import EdgeMetrics
from services.edge.outbox import Outbox, outbox_path
from services.edge.providers import anthropic, openai
from services.edge.providers.base import ProviderClient
from services.edge.providers.catalog import Catalog, is_upstream, parse
from services.edge.providers.credentials import AuthCredentials, NoCredential, ProviderKey
from services.edge.settlements import Settlements, SettlementsCollector
from services.edge.targets import Target
from services.pb.auth.v1 import auth_pb2, auth_pb2_grpc
from services.pb.engine.v1 import engine_pb2, engine_pb2_grpc
from services.pb.metering.v1 import metering_pb2_grpc

# Model resolutions change only when an operator deploys another export; a few seconds of caching
# saves a round trip per request without hiding a redeploy for long.
MODEL_CACHE_TTL_S = 5.0
# Short deadlines for governance calls: a slow dependency must fail the request, not hang it.
CONTROL_TIMEOUT_S = 10.0
MODEL_CACHE_SIZE = 10_000
# Connection pools per provider, and idle connections each keeps (256 in all).
PROVIDER_POOLS = 8
KEEPALIVE_PER_POOL = 32
# At shutdown, how long the edge keeps trying to deliver its kept settlements before it leaves
# them in the outbox for its next start.
OUTBOX_FLUSH_S = 5.0

T = TypeVar("T")


def backends_of(request: Request) -> Backends:
    """The app's clients, opened in its lifespan."""
    backends: Backends = request.app.state.backends
    return backends


async def unary(method: Callable[..., Awaitable[T]], request: Any, service: str) -> T:
    """One control-plane call with its deadline; a failure becomes the client's `APIError`."""
    try:
        return await method(request, timeout=CONTROL_TIMEOUT_S)
    except grpc.aio.AioRpcError as exc:
        raise from_grpc(exc, service) from None


def provider_http(base_url: str, settings: Settings) -> list[httpx.AsyncClient]:
    """The HTTP clients of a provider, alike, whose small pools its requests take in turn
    (see `ProviderClient`)."""
    return [
        httpx.AsyncClient(
            base_url=base_url,
            timeout=httpx.Timeout(
                settings.upstream_read_timeout_s, connect=settings.upstream_connect_timeout_s
            ),
            # A redirect could send the provider key to another host.
            follow_redirects=False,
            headers={"user-agent": "sluice-edge"},
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=KEEPALIVE_PER_POOL),
        )
        for _ in range(PROVIDER_POOLS)
    ]


@dataclass
class Backends:
    settings: Settings
    channels: list[grpc.aio.Channel] = field(default_factory=list)
    _models: dict[str, tuple[float, engine_pb2.ModelInfo]] = field(default_factory=dict)
    # Recently authenticated principals (see governance.authenticate).
    principals: dict[bytes, tuple[float, auth_pb2.Principal]] = field(default_factory=dict)
    # Settlements in flight, referenced so they are not garbage-collected mid-way and so that
    # shutdown can wait for them.
    pending: set[asyncio.Task[None]] = field(default_factory=set)
    metrics: EdgeMetrics = field(default_factory=EdgeMetrics)
    trusted_proxies: tuple[IPNetwork, ...] = ()
    admin_token: bytes = b""
    providers: dict[str, ProviderClient] = field(default_factory=dict)
    # Started by the server on SIGTERM (services.edge.drain); read by /readyz and the streams.
    drain: Drain = field(default_factory=Drain)
    # The process's tracing (services.common.tracing); off unless main() turned it on.
    tracing: Tracing = field(default_factory=Tracing)

    def __post_init__(self) -> None:
        self.trusted_proxies = parse_networks(self.settings.trusted_proxies)
        self.admin_token = self.settings.resolved_admin_token()
        auth = self._channel(self.settings.auth_addr)
        metering = self._channel(self.settings.metering_addr)
        self.auth = auth_pb2_grpc.AuthServiceStub(auth)
        self.metering = metering_pb2_grpc.MeteringServiceStub(metering)
        # Admit and Settle, on every request's latency path, travel as messages on long-lived
        # streams (services.edge.meter); with tracing on, as unary calls, each with its span.
        self.meter: MeterCalls = (
            self.metering if self.tracing.enabled else MeterStreams(self.metering)
        )
        # Responses of the Responses API that Sluice stores itself (metering keeps them).
        self.responses = metering_pb2_grpc.ResponseStoreServiceStub(metering)
        # One channel per engine, chosen per request by load (services.edge.engines).
        self.engines = EnginePool(
            self.settings.engine_addr,
            self.drain,
            interceptors=self.tracing.client_interceptors(),
        )
        self.settlements = Settlements(self.meter)
        self.leases = Leases(
            self.metering,
            self.settings.reservation_ttl_s,
            max_s=self.settings.request_timeout_s,
        )
        self.metrics.registry.register(EnginePoolCollector(self.engines))
        self.metrics.registry.register(SettlementsCollector(self.settlements))
        self.catalog = Catalog.from_settings(self.settings)
        # Upstream models use each organization's provider key, decrypted by auth (cached briefly).
        self.credentials = AuthCredentials(self.auth)
        if not self.providers:
            s = self.settings
            t = self.tracing
            self.providers = {
                openai.OPENAI: openai.client(s, provider_http(s.openai_base_url, s), tracing=t),
                anthropic.ANTHROPIC: anthropic.client(
                    s, provider_http(s.anthropic_base_url, s), tracing=t
                ),
            }

    async def start(self) -> None:
        """Starts what runs in the background: the engines' health watches and DNS
        resolution, and the outbox (kept settlements from an earlier run are delivered now)."""
        await self.engines.start()
        self.settlements.open(Outbox(outbox_path(self.settings.data_dir, self.settings.edge_port)))

    @property
    def engine(self) -> engine_pb2_grpc.EngineServiceStub:
        """A stub of one healthy engine, for a unary call that needs no failover; generation
        goes through `engines.generate`, lookups through `engines.unary`."""
        engine = self.engines.pick()
        if engine is None:
            raise no_engine_error()
        return engine.stub

    def _channel(self, addr: str) -> grpc.aio.Channel:
        # Every replica the address names, round robin over those passing health checks, with
        # fast reconnects (services.common.channels); calls carry the request's trace.
        channel = aio_channel(addr, interceptors=self.tracing.client_interceptors())
        self.channels.append(channel)
        return channel

    async def resolve(self, name: str, org_id: str) -> Target:
        """The model a request names: a hosted model (engine) or an upstream one, which an
        organization reaches only while it holds that provider's credential."""
        if is_upstream(name):
            model = parse(name)
            if model.provider not in await self.credentials.providers(org_id):
                raise no_credential(model.name, model.provider)
            return Target(self.catalog.info(model), model)
        return Target(await self._hosted(name))

    async def _hosted(self, name: str) -> engine_pb2.ModelInfo:
        now = time.monotonic()
        cached = self._models.get(name)
        if cached and now - cached[0] < MODEL_CACHE_TTL_S:
            return cached[1]
        info: engine_pb2.ModelInfo = await self.engines.unary(
            lambda stub: stub.ResolveModel,
            engine_pb2.ResolveModelRequest(model=name),
            CONTROL_TIMEOUT_S,
        )
        if len(self._models) >= MODEL_CACHE_SIZE:
            self._models.clear()
        self._models[name] = (now, info)
        return info

    async def list_models(self, org_id: str) -> list[engine_pb2.ModelInfo]:
        """The hosted models, then the listed models of every provider the organization holds
        a credential for."""
        try:
            resp = await self.engines.unary(
                lambda stub: stub.ListModels, engine_pb2.ListModelsRequest(), CONTROL_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc, "engine") from None
        upstream = self.catalog.listed_models(await self.credentials.providers(org_id))
        return [*resp.models, *upstream]

    async def provider_key(self, org_id: str, target: Target) -> ProviderKey:
        assert target.upstream is not None
        try:
            return await self.credentials.api_key(org_id, target.upstream.provider)
        except NoCredential:
            raise no_credential(target.info.name, target.upstream.provider) from None

    async def close(self) -> None:
        # Every admitted request settles (or is kept in the outbox) before the edge exits.
        while self.pending:
            await asyncio.gather(*list(self.pending), return_exceptions=True)
        await self.leases.close()
        await self.settlements.close(OUTBOX_FLUSH_S)
        if isinstance(self.meter, MeterStreams):
            await self.meter.close()
        for provider in self.providers.values():
            await provider.aclose()
        self.credentials.clear()
        await self.engines.close()
        for channel in self.channels:
            await channel.close()


def no_credential(name: str, provider: str) -> APIError:
    return APIError(
        404,
        f"The model '{name}' is not available: the organization has no {provider} credential; "
        "an administrator can add one with `sluice providers add`.",
        code="model_not_found",
        param="model",
    )
