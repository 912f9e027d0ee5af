"""The edge's gRPC clients to auth, metering and engine, opened in the app's lifespan."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from starlette.requests import Request

from services.common.settings import Settings
from services.edge.client_ip import IPNetwork, parse_networks
from services.edge.errors import from_grpc
from services.edge.metrics import EdgeMetrics
from services.pb.auth.v1 import auth_pb2, auth_pb2_grpc
from services.pb.engine.v1 import engine_pb2, engine_pb2_grpc
from services.pb.metering.v1 import metering_pb2_grpc

# Model resolutions change only when an operator deploys another export; a few seconds of caching
# saves a round trip per request without hiding a redeploy for long.
MODEL_CACHE_TTL_S = 5.0
# Short deadlines for governance calls: a slow dependency must fail the request, not hang it.
CONTROL_TIMEOUT_S = 10.0
MODEL_CACHE_SIZE = 10_000

T = TypeVar("T")


def backends_of(request: Request) -> Backends:
    """The app's gRPC clients, opened in its lifespan."""
    backends: Backends = request.app.state.backends
    return backends


async def unary(method: Callable[..., Awaitable[T]], request: Any, service: str) -> T:
    """One control-plane call with its deadline; a failure becomes the client's `APIError`."""
    try:
        return await method(request, timeout=CONTROL_TIMEOUT_S)
    except grpc.aio.AioRpcError as exc:
        raise from_grpc(exc, service) from None


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

    def __post_init__(self) -> None:
        self.trusted_proxies = parse_networks(self.settings.trusted_proxies)
        self.admin_token = self.settings.resolved_admin_token()
        auth = self._channel(self.settings.auth_addr)
        metering = self._channel(self.settings.metering_addr)
        engine = self._channel(self.settings.engine_addr)
        self.auth = auth_pb2_grpc.AuthServiceStub(auth)
        self.metering = metering_pb2_grpc.MeteringServiceStub(metering)
        self.engine = engine_pb2_grpc.EngineServiceStub(engine)

    def _channel(self, addr: str) -> grpc.aio.Channel:
        from services.common.channels import aio_channel

        # Every replica the address names, round robin over those passing health checks, with
        # fast reconnects (services.common.channels).
        channel = aio_channel(addr)
        self.channels.append(channel)
        return channel

    async def resolve_model(self, name: str, org_id: str) -> engine_pb2.ModelInfo:
        """The model a request names; upstream models resolve per organization (credentials)."""
        now = time.monotonic()
        key = f"{org_id}\0{name}" if "/" in name else name
        cached = self._models.get(key)
        if cached and now - cached[0] < MODEL_CACHE_TTL_S:
            return cached[1]
        info = await self.engine.ResolveModel(
            engine_pb2.ResolveModelRequest(model=name, org_id=org_id), timeout=CONTROL_TIMEOUT_S
        )
        if len(self._models) >= MODEL_CACHE_SIZE:
            self._models.clear()
        self._models[key] = (now, info)
        return info

    async def close(self) -> None:
        if self.pending:
            await asyncio.gather(*list(self.pending), return_exceptions=True)
        for channel in self.channels:
            await channel.close()
