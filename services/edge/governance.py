"""Governance around one request: authenticate, resolve the model, admit (reserve), and settle
exactly once. Every generating route (chat, completions, embeddings, messages) goes through
`admit`, whatever serves the model.

The edge holds no business state: every decision is made by auth or metering, and this module
only sequences the calls and guarantees that an admitted request is always settled, whether it
finished, failed, or its client went away.

With tracing on, each step is a span under the request's (services.edge.traces):
"authenticate", "admit" (model resolution and reservation), the generation (`chat <model>`,
the GenAI conventions' client span, from admission to settlement: the engine's stream or the
provider's calls are its children) and "settle".
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from starlette.requests import Request

from services.common import genai_spans, tracing
from services.common.quota import quota_from_proto, quota_to_proto
from services.common.ratelimits import rate_limit_headers
from services.edge.backends import CONTROL_TIMEOUT_S, Backends
from services.edge.client_ip import client_ip
from services.edge.control import with_transport_retries
from services.edge.errors import APIError, from_grpc
from services.edge.limits import check_model
from services.edge.targets import Target
from services.pb.auth.v1 import auth_pb2
from services.pb.engine.v1 import engine_pb2
from services.pb.metering.v1 import metering_pb2

log = logging.getLogger(__name__)

PRINCIPAL_CACHE_TTL_S = 1.0
PRINCIPAL_CACHE_SIZE = 10_000

# Engine answers that refuse a request (recorded as "rejected") rather than fail it ("error").
REFUSALS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


def bearer_key(request: Request, *, x_api_key: bool = False) -> str:
    """The client's Sluice key: `Authorization: Bearer`, or (on the Anthropic routes, where the
    Anthropic SDK sends it) `x-api-key`."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if x_api_key and (key := request.headers.get("x-api-key", "").strip()):
        return key
    how = "'x-api-key: YOUR_KEY' or " if x_api_key else ""
    raise APIError(
        401,
        f"You didn't provide an API key. Send it as {how}'Authorization: Bearer YOUR_KEY'.",
        code="invalid_api_key",
    )


def request_ip(backends: Backends, request: Request) -> str:
    """The client address (see `client_ip`), computed once per request."""
    cached: str | None = getattr(request.state, "client_ip", None)
    if cached is None:
        peer = request.client.host if request.client else ""
        cached = client_ip(peer, request.headers.get("x-forwarded-for"), backends.trusted_proxies)
        request.state.client_ip = cached
    return cached


async def authenticate(
    backends: Backends, request: Request, model: str, *, x_api_key: bool = False
) -> auth_pb2.Principal:
    """The caller's principal (auth's `Authenticate`, or this edge's one-second cache)."""
    with backends.tracing.span("authenticate") as span:
        principal = await _authenticate(backends, request, model, x_api_key=x_api_key)
        if span.is_recording():
            span.set_attributes(principal_attributes(principal))
        return principal


def principal_attributes(principal: auth_pb2.Principal) -> dict[str, str]:
    """Who called, by identifiers only, for spans."""
    return {
        "sluice.org.id": principal.org_id,
        "sluice.project.id": principal.project_id,
        "sluice.key.id": principal.key_id,
    }


async def _authenticate(
    backends: Backends, request: Request, model: str, *, x_api_key: bool = False
) -> auth_pb2.Principal:
    # Every request that names a model passes here before any wire carries the name.
    check_model(model)
    key = bearer_key(request, x_api_key=x_api_key)
    ip = request_ip(backends, request)
    # Keyed by a digest, so the cache holds no secret; only successes are cached, for at most
    # PRINCIPAL_CACHE_TTL_S, so a revoked key stops working within that time on every edge.
    cache_key = hashlib.sha256(f"{key}\0{ip}\0{model}".encode()).digest()
    cached = backends.principals.get(cache_key)
    now = time.monotonic()
    if cached and now - cached[0] < PRINCIPAL_CACHE_TTL_S:
        return cached[1]
    try:
        principal: auth_pb2.Principal = await with_transport_retries(
            backends.auth.Authenticate,
            auth_pb2.AuthenticateRequest(api_key=key, client_ip=ip, model=model),
            timeout_s=CONTROL_TIMEOUT_S,
        )
    except grpc.aio.AioRpcError as exc:
        err = from_grpc(exc, "auth")
        if exc.code() == grpc.StatusCode.PERMISSION_DENIED and model:
            # The key is genuine but refused here (address or model): the ledger answers
            # "who called what" for refusals too.
            ids = dict(exc.trailing_metadata() or ())
            record_refusal(backends, request, model, ids)
        raise err from None
    if len(backends.principals) >= PRINCIPAL_CACHE_SIZE:
        backends.principals.clear()
    backends.principals[cache_key] = (now, principal)
    return principal


def metering_quota(quota: auth_pb2.Quota) -> metering_pb2.Quota:
    """A key's limits (as auth keeps them) in the form metering enforces them."""
    return quota_to_proto(quota_from_proto(quota), metering_pb2.Quota)


def record_refusal(
    backends: Backends, request: Request, model: str, ids: Mapping[str, str | bytes]
) -> None:
    """Writes a "rejected" usage record for a request refused after its key was known."""
    req = metering_pb2.SettleRequest(
        org_id=str(ids.get("sluice-org-id", "")),
        project_id=str(ids.get("sluice-project-id", "")),
        key_id=str(ids.get("sluice-key-id", "")),
        model=model,
        endpoint=request.url.path,
        status="rejected",
        client_ip=request_ip(backends, request),
        request_id=f"req-{uuid.uuid4().hex}",
    )
    if req.org_id and req.key_id:
        _background(backends, _settle_with_retries(backends, req))


def _background(backends: Backends, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    # Referenced in `pending` so it is not garbage-collected mid-way and shutdown waits for it.
    task = asyncio.get_running_loop().create_task(coro)
    backends.pending.add(task)
    task.add_done_callback(backends.pending.discard)
    return task


async def _settle_with_retries(backends: Backends, req: metering_pb2.SettleRequest) -> None:
    # Retried, then kept in the edge's outbox until metering takes it (services.edge
    # .settlements); settling is idempotent, so no retry can charge twice.
    await backends.settlements.settle(req)


@dataclass(frozen=True)
class Bounds:
    """Upper bounds on a request's tokens, from which metering sizes its reservation."""

    prompt: int
    # Every choice's completion tokens together.
    completion: int


async def admit(
    backends: Backends,
    request: Request,
    model_ref: str,
    bounds: Callable[[Target], Bounds],
    *,
    x_api_key: bool = False,
    principal: auth_pb2.Principal | None = None,
) -> Admission:
    """Authenticates the caller, resolves `model_ref` and reserves `bounds(model)` tokens: the
    sequence every generating route runs before it calls anything that costs money. A route
    that had to know the caller earlier (to read its stored state) passes the `principal` that
    `authenticate` gave it for the same model."""
    if principal is None:
        principal = await authenticate(backends, request, model_ref, x_api_key=x_api_key)
    # The request's own context: the generation and the settlement are its children too.
    parent = tracing.current_context()
    with backends.tracing.span("admit") as span:
        try:
            target = await backends.resolve(model_ref, principal.org_id)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in REFUSALS:
                record_refusal(backends, request, model_ref, principal_ids(principal))
            raise from_grpc(exc, "engine") from None
        except APIError as exc:
            if exc.status < 500:
                record_refusal(backends, request, model_ref, principal_ids(principal))
            raise
        wanted = bounds(target)
        admission = await Admission.admit(backends, request, principal, target, wanted)
        if span.is_recording():
            span.set_attributes(
                {
                    "sluice.request.id": admission.request_id,
                    "sluice.reserved_tokens": admission.reserved_tokens,
                }
            )
    admission.begin_generation(parent, model_ref)
    return admission


def principal_ids(principal: auth_pb2.Principal) -> dict[str, str]:
    return {
        "sluice-org-id": principal.org_id,
        "sluice-project-id": principal.project_id,
        "sluice-key-id": principal.key_id,
    }


@dataclass
class Admission:
    """An admitted request: settles its reservation exactly once with what was produced."""

    backends: Backends
    principal: auth_pb2.Principal
    target: Target
    endpoint: str
    request_id: str
    client_ip: str
    reservation_id: str = ""
    max_context: int = 0
    reserved_tokens: int = 0
    # OpenAI's x-ratelimit-* headers as metering computed them at admission.
    headers: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Finish reasons of the choices, and the model that answered where the answer names it.
    finish_reasons: list[str] = field(default_factory=list)
    response_model: str = ""
    # The request's trace (see the module doc): the context its spans are children of, and the
    # generation's span, ended by settle() (INVALID_SPAN, a no-op, when tracing is off).
    trace_context: Context | None = None
    generation: Span = tracing.INVALID_SPAN
    _generation_started: float = 0.0
    _settled: asyncio.Task[None] | None = None
    _lease: asyncio.Task[None] | None = None

    @property
    def model(self) -> engine_pb2.ModelInfo:
        return self.target.info

    @classmethod
    async def admit(
        cls,
        backends: Backends,
        request: Request,
        principal: auth_pb2.Principal,
        target: Target,
        bounds: Bounds,
    ) -> Admission:
        ip = request_ip(backends, request)
        adm = cls(backends, principal, target, request.url.path, f"req-{uuid.uuid4().hex}", ip)
        context = target.info.context_length
        prompt = min(bounds.prompt, context) if context else bounds.prompt
        try:
            resp = await with_transport_retries(
                backends.meter.Admit,
                metering_pb2.AdmitRequest(
                    org_id=principal.org_id,
                    project_id=principal.project_id,
                    key_id=principal.key_id,
                    model=target.info.name,
                    upper_bound_tokens=prompt + bounds.completion,
                    endpoint=adm.endpoint,
                    request_id=adm.request_id,
                    key_quota=metering_quota(principal.key_quota),
                    client_ip=ip,
                    provider=target.provider,
                    # An upstream provider counts the prompt itself: the plan's max_context can
                    # cap only the completion we ask for, so the reservation must hold both.
                    prompt_bound_tokens=prompt if target.upstream else 0,
                ),
                timeout_s=CONTROL_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as exc:
            err = from_grpc(exc, "metering")
            err.headers["x-request-id"] = adm.request_id
            raise err from None
        adm.reservation_id = resp.reservation_id
        # Renewed while the request is open, so a long stream keeps its reservation.
        adm._lease = backends.leases.hold(resp.reservation_id, resp.expires_ms)
        adm.max_context = resp.max_context
        adm.reserved_tokens = resp.reserved_tokens
        limits = resp.rate_limits
        adm.headers = rate_limit_headers(
            limits.limit_requests,
            limits.remaining_requests,
            limits.reset_requests_ms,
            limits.limit_tokens,
            limits.remaining_tokens,
            limits.reset_tokens_ms,
        )
        adm.headers["x-request-id"] = adm.request_id
        return adm

    def completion_cap(self, wanted: int | None) -> int | None:
        """What an upstream request may ask for: `wanted`, lowered to the plan's max_context."""
        if self.max_context <= 0:
            return wanted
        return self.max_context if wanted is None else min(wanted, self.max_context)

    def begin_generation(self, parent: Context, model_ref: str) -> None:
        """Starts the generation's span (the GenAI conventions' client span, named after the
        model as the request named it), a child of `parent`; settle() ends it."""
        if not self.backends.tracing.enabled:
            return
        self.trace_context = parent
        operation = genai_spans.operation_of(self.endpoint)
        attributes = genai_spans.attributes(operation, self.target.provider, model_ref)
        attributes["sluice.request.id"] = self.request_id
        if self.target.upstream is None:
            attributes[genai_spans.RESPONSE_MODEL] = self.target.public_name
        self.generation = self.backends.tracing.start(
            genai_spans.span_name(operation, model_ref),
            kind=SpanKind.CLIENT,
            attributes=attributes,
            context=parent,
        )
        self._generation_started = time.monotonic()

    def generating(self, request: engine_pb2.GenerateRequest | None = None) -> tracing.SpanBlock:
        """Makes the generation's span current for a `with` block, so that the calls made in it
        (the engine's stream, the provider's attempts) are its children; `request`, a hosted
        generation's, adds its settings to the span."""
        if request is not None and self.generation.is_recording():
            self.generation.set_attributes(genai_spans.hosted_request_attributes(request))
        return tracing.use(self.generation)

    def output_started(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
            if self.generation.is_recording():
                elapsed = self.first_token_at - self._generation_started
                genai_spans.record_first_token(self.generation, elapsed)

    def observe(self, msg: engine_pb2.GenerateResponse) -> None:
        if msg.token_count:
            self.output_started()
        if msg.prompt_tokens:
            # Known from the first message, so that a stream broken later bills the prompt too.
            self.prompt_tokens = msg.prompt_tokens
        self.completion_tokens += msg.token_count
        if msg.finish_reason:
            self.finish_reasons.append(msg.finish_reason)
        if msg.HasField("usage"):
            self.prompt_tokens = msg.usage.prompt_tokens
            self.completion_tokens = msg.usage.completion_tokens

    def error(self, err: APIError) -> APIError:
        """`err` with this request's headers (its id and rate-limit state) added."""
        for name, value in self.headers.items():
            err.headers.setdefault(name, value)
        return err

    def settle(self, status: str) -> asyncio.Task[None]:
        """Starts settlement once; later calls return the same task.

        It runs as its own task so that a cancelled handler (client gone) still settles.
        """
        if self._settled is None:
            if self._lease is not None:
                self._lease.cancel()
            self._end_generation(status)
            self._settled = _background(self.backends, self._settle(status))
        return self._settled

    def _end_generation(self, status: str) -> None:
        span = self.generation
        if not span.is_recording():
            return
        genai_spans.record_outcome(
            span, self.prompt_tokens, self.completion_tokens, self.finish_reasons
        )
        if self.response_model:
            span.set_attribute(genai_spans.RESPONSE_MODEL, self.response_model)
        span.set_attribute("sluice.status", status)
        if status != "ok":
            span.set_attribute("error.type", status)
            span.set_status(Status(StatusCode.ERROR, status))
        span.end()

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
            project_id=self.principal.project_id,
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
            client_ip=self.client_ip,
            provider=self.target.provider,
        )
        attributes = {"sluice.request.id": self.request_id, "sluice.status": status}
        with self.backends.tracing.span(
            "settle", attributes=attributes, context=self.trace_context
        ):
            await _settle_with_retries(self.backends, req)
