"""Governance around one request: authenticate, admit (reserve), and settle exactly once.

The edge holds no business state: every decision is made by auth or metering, and this module
only sequences the calls and guarantees that an admitted request is always settled, whether it
finished, failed, or its client went away.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from dataclasses import dataclass, field

import grpc
from starlette.requests import Request

from services.edge.backends import CONTROL_TIMEOUT_S, Backends
from services.edge.errors import APIError, from_grpc
from services.pb.auth.v1 import auth_pb2
from services.pb.engine.v1 import engine_pb2
from services.pb.metering.v1 import metering_pb2

log = logging.getLogger(__name__)

SETTLE_ATTEMPTS = 5
PRINCIPAL_CACHE_TTL_S = 1.0
PRINCIPAL_CACHE_SIZE = 10_000


def bearer_key(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise APIError(
            401,
            "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.",
            code="invalid_api_key",
        )
    return token.strip()


async def authenticate(backends: Backends, request: Request, model: str) -> auth_pb2.Principal:
    key = bearer_key(request)
    client_ip = request.client.host if request.client else ""
    # Keyed by a digest, so the cache holds no secret; only successes are cached, for at most
    # PRINCIPAL_CACHE_TTL_S, so a revoked key stops working within that time on every edge.
    cache_key = hashlib.sha256(f"{key}\0{client_ip}\0{model}".encode()).digest()
    cached = backends.principals.get(cache_key)
    now = time.monotonic()
    if cached and now - cached[0] < PRINCIPAL_CACHE_TTL_S:
        return cached[1]
    try:
        principal: auth_pb2.Principal = await backends.auth.Authenticate(
            auth_pb2.AuthenticateRequest(api_key=key, client_ip=client_ip, model=model),
            timeout=CONTROL_TIMEOUT_S,
        )
    except grpc.aio.AioRpcError as exc:
        raise from_grpc(exc, "auth") from None
    if len(backends.principals) >= PRINCIPAL_CACHE_SIZE:
        backends.principals.clear()
    backends.principals[cache_key] = (now, principal)
    return principal


@dataclass
class Admission:
    """An admitted request: settles its reservation exactly once with what was produced."""

    backends: Backends
    principal: auth_pb2.Principal
    model: engine_pb2.ModelInfo
    endpoint: str
    request_id: str
    reservation_id: str = ""
    started: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    _settled: asyncio.Task[None] | None = None

    @classmethod
    async def admit(
        cls,
        backends: Backends,
        principal: auth_pb2.Principal,
        model: engine_pb2.ModelInfo,
        endpoint: str,
        upper_bound_tokens: int,
    ) -> Admission:
        adm = cls(backends, principal, model, endpoint, f"req-{uuid.uuid4().hex}")
        try:
            resp = await backends.metering.Admit(
                metering_pb2.AdmitRequest(
                    org_id=principal.org_id,
                    key_id=principal.key_id,
                    model=model.name,
                    upper_bound_tokens=upper_bound_tokens,
                    endpoint=endpoint,
                    request_id=adm.request_id,
                ),
                timeout=CONTROL_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc, "metering") from None
        adm.reservation_id = resp.reservation_id
        return adm

    def observe(self, msg: engine_pb2.GenerateResponse) -> None:
        if msg.token_count and self.first_token_at is None:
            self.first_token_at = time.monotonic()
        self.completion_tokens += msg.token_count
        if msg.HasField("usage"):
            self.prompt_tokens = msg.usage.prompt_tokens
            self.completion_tokens = msg.usage.completion_tokens

    def settle(self, status: str) -> asyncio.Task[None]:
        """Starts settlement once; later calls return the same task.

        It runs as its own task so that a cancelled handler (client gone) still settles.
        """
        if self._settled is None:
            self._settled = asyncio.get_running_loop().create_task(self._settle(status))
            self.backends.pending.add(self._settled)
            self._settled.add_done_callback(self.backends.pending.discard)
        return self._settled

    async def _settle(self, status: str) -> None:
        now = time.monotonic()
        self.backends.metrics.observe(
            self.endpoint,
            self.model.name,
            status,
            self.prompt_tokens,
            self.completion_tokens,
            now - self.started,
            (self.first_token_at - self.started) if self.first_token_at else None,
        )
        req = metering_pb2.SettleRequest(
            reservation_id=self.reservation_id,
            org_id=self.principal.org_id,
            key_id=self.principal.key_id,
            model=self.model.name,
            model_digest=self.model.digest,
            endpoint=self.endpoint,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            status=status,
            latency_ms=(now - self.started) * 1000.0,
            ttft_ms=((self.first_token_at - self.started) * 1000.0) if self.first_token_at else 0,
            request_id=self.request_id,
        )
        for attempt in range(SETTLE_ATTEMPTS):
            try:
                await self.backends.metering.Settle(req, timeout=CONTROL_TIMEOUT_S)
                return
            except grpc.aio.AioRpcError as exc:
                # Settle is idempotent per reservation, so retrying cannot double-charge.
                log.warning(
                    "settle %s failed (%s), attempt %d", self.request_id, exc.code(), attempt + 1
                )
                await asyncio.sleep(0.2 * 2**attempt)
        log.error("settle %s gave up after %d attempts", self.request_id, SETTLE_ATTEMPTS)
