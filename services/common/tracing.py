"""OpenTelemetry traces for every service: one setup per process from the standard `OTEL_*`
variables, the W3C trace context carried over gRPC metadata, and the spans call sites open.

Tracing is off unless it is asked for: `OTEL_TRACES_EXPORTER` naming an exporter (`otlp`, sent
as HTTP/protobuf, or `console`), or an OTLP endpoint set (`OTEL_EXPORTER_OTLP_ENDPOINT` or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, which then means `otlp`); `OTEL_SDK_DISABLED=true` or
`OTEL_TRACES_EXPORTER=none` keep it off whatever else is set. (OpenTelemetry's own default
exporter is `otlp`; a service that would post spans to localhost:4318 unasked is not ours.) When
off, the SDK is not even imported, servers and channels get no interceptor, and `Tracing.span`
hands back one shared no-op, so a request pays one method call per span and nothing else.

When on, the SDK reads the rest of the standard variables itself: the endpoint, headers,
timeout and compression of the exporter, the batch processor's schedule (`OTEL_BSP_*`), the
sampler (`OTEL_TRACES_SAMPLER`, parent-based by default, so a client's unsampled `traceparent`
is honoured) and `OTEL_RESOURCE_ATTRIBUTES`. A process is named `OTEL_SERVICE_NAME`, else
`sluice-<service>`.

The provider is not installed as OpenTelemetry's global one: Sluice's code takes its tracer from
the `Tracing` object its `main()` built, which keeps tests free to build as many as they like.

Only identifiers, model names, sizes, counts and status codes go into spans, never a key, a
provider key, or the text of a prompt or a completion; an exception marks its span with its code
or type (`error.type`), never with its message, which may quote the input.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger(__name__)

INSTRUMENTATION_NAME = "sluice"
# W3C trace context only (https://www.w3.org/TR/trace-context/): `traceparent` and `tracestate`,
# from a client's HTTP headers and over gRPC metadata between the services. Baggage is not
# taken from clients.
PROPAGATOR = TraceContextTextMapPropagator()
TRACE_HEADERS = frozenset(PROPAGATOR.fields)
EXPORTERS = ("otlp", "console")
OTLP_PROTOCOL = "http/protobuf"
# Health checks run every second or so on every channel: spans of them would bury the requests.
UNTRACED_SERVICES = ("/grpc.health.v1.",)
# gRPC codes a server reports as its own failure (OpenTelemetry's RPC conventions); the others
# are the caller's doing and leave a server span's status unset.
SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)

INVALID_SPAN: Span = trace.INVALID_SPAN
# What `Tracing.span` and `use` return: a `with` block in which a span is current.
SpanBlock = AbstractContextManager[Span]


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def exporter_names(environ: Mapping[str, str]) -> list[str]:
    """The exporters the environment asks for (see the module doc); empty means off.

    Raises ValueError for an exporter or an OTLP protocol this build does not speak, so that a
    misconfigured process fails at start rather than dropping its spans.
    """
    if _truthy(environ.get("OTEL_SDK_DISABLED")):
        return []
    named = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",")]
    names = [n for n in named if n]
    if not names:
        endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        names = ["otlp"] if endpoint else []
    if "none" in names:
        return []
    for name in names:
        if name not in EXPORTERS:
            raise ValueError(
                f"OTEL_TRACES_EXPORTER={name!r} is not supported; use otlp, console or none"
            )
    if "otlp" in names:
        protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get(
            "OTEL_EXPORTER_OTLP_PROTOCOL", OTLP_PROTOCOL
        )
        if protocol.strip() != OTLP_PROTOCOL:
            raise ValueError(
                f"OTLP protocol {protocol!r} is not supported; traces are sent as {OTLP_PROTOCOL}"
            )
    return list(dict.fromkeys(names))


def service_name(service: str, environ: Mapping[str, str]) -> str:
    """OTEL_SERVICE_NAME, else the name OTEL_RESOURCE_ATTRIBUTES gives, else sluice-<service>."""
    if name := environ.get("OTEL_SERVICE_NAME", "").strip():
        return name
    for item in environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, _, value = item.partition("=")
        if key.strip() == "service.name" and value.strip():
            return value.strip()
    return f"sluice-{service}"


def setup_tracing(service: str, environ: Mapping[str, str] | None = None) -> Tracing:
    """The process's tracing as the environment sets it (see the module doc); call once, from
    `main()`, and `shutdown()` the result before the process exits."""
    env = os.environ if environ is None else environ
    names = exporter_names(env)
    if not names:
        return Tracing()
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporters: list[SpanExporter] = []
    for name in names:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporters.append(OTLPSpanExporter())
        else:
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            exporters.append(ConsoleSpanExporter())
    # The batch processor exports on its own thread, never on the event loop.
    tracing = Tracing.with_processors(
        service_name(service, env), [BatchSpanProcessor(e) for e in exporters]
    )
    log.info("tracing on: %s spans as %s", ", ".join(names), tracing.service)
    return tracing


class _NoSpan:
    """The context manager `Tracing.span` returns when tracing is off: stateless and shared."""

    __slots__ = ()

    def __enter__(self) -> Span:
        return INVALID_SPAN

    def __exit__(
        self,
        typ: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


NO_SPAN = _NoSpan()


class _ActiveSpan:
    """A started span made current for a `with` block and ended after it."""

    __slots__ = ("span", "token")

    def __init__(self, span: Span) -> None:
        self.span = span
        self.token: object = None

    def __enter__(self) -> Span:
        self.token = otel_context.attach(trace.set_span_in_context(self.span))
        return self.span

    def __exit__(
        self,
        typ: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        otel_context.detach(self.token)  # type: ignore[arg-type]
        if exc is not None:
            mark_failed(self.span, exc)
        self.span.end()


def error_type(exc: BaseException) -> str:
    """What an exception says about a failure without its message: the OpenAI-style code of
    Sluice's errors, "cancelled", or the exception's type."""
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    code = getattr(exc, "code", None)
    if isinstance(code, str) and code:
        return code
    return type(exc).__qualname__


def mark_failed(span: Span, exc: BaseException, description: str | None = None) -> None:
    """Marks a span as failed by `exc` (its `error.type`, never its message)."""
    if not span.is_recording() or isinstance(exc, GeneratorExit):
        return
    kind = error_type(exc)
    span.set_attribute("error.type", kind)
    span.set_status(Status(StatusCode.ERROR, description or kind))


class Tracing:
    """One process's tracer, or nothing when tracing is off (`Tracing()`)."""

    def __init__(self, provider: TracerProvider | None = None, service: str = "") -> None:
        self.provider = provider
        self.service = service
        self.tracer: trace.Tracer | None = (
            provider.get_tracer(INSTRUMENTATION_NAME) if provider is not None else None
        )

    @classmethod
    def with_processors(cls, service: str, processors: Iterable[SpanProcessor]) -> Tracing:
        """Tracing on, naming the process `service`, with its spans going to `processors`."""
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider

        resource = Resource.create(
            {
                "service.name": service,
                "service.namespace": "sluice",
                # Replicas of one service share a name; each process is told apart by this.
                "service.instance.id": uuid.uuid4().hex,
            }
        )
        provider = TracerProvider(resource=resource)
        for processor in processors:
            provider.add_span_processor(processor)
        return cls(provider, service)

    @property
    def enabled(self) -> bool:
        return self.tracer is not None

    def span(
        self,
        name: str,
        *,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Mapping[str, Any] | None = None,
        context: Context | None = None,
    ) -> SpanBlock:
        """A span current for a `with` block (a child of the current span, or of `context`),
        ended after it; an exception leaving the block marks it failed (`mark_failed`)."""
        if self.tracer is None:
            return NO_SPAN
        return _ActiveSpan(
            self.tracer.start_span(name, context=context, kind=kind, attributes=attributes)
        )

    def start(
        self,
        name: str,
        *,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Mapping[str, Any] | None = None,
        context: Context | None = None,
    ) -> Span:
        """A started span that is not made current; its owner ends it (`INVALID_SPAN` when
        off, on which every call is a no-op)."""
        if self.tracer is None:
            return INVALID_SPAN
        return self.tracer.start_span(name, context=context, kind=kind, attributes=attributes)

    def server_interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        """What a gRPC server needs to continue its callers' traces (none when off)."""
        return [] if self.tracer is None else [ServerTracing(self.tracer)]

    def client_interceptors(self) -> list[grpc.aio.ClientInterceptor] | None:
        """What a gRPC channel needs to carry the current trace to its servers (None when off:
        a channel without interceptors takes grpc's direct path)."""
        return (
            None
            if self.tracer is None
            else [UnaryClientTracing(self.tracer), StreamClientTracing(self.tracer)]
        )

    def shutdown(self) -> None:
        """Exports what is still buffered, then stops (the processors' own timeouts bound it)."""
        if self.provider is not None:
            self.provider.shutdown()


def use(span: Span) -> SpanBlock:
    """Makes an already started span current for a `with` block, leaving it open after. An
    unsampled span is made current too, so that what it calls stays unsampled."""
    if span is INVALID_SPAN:
        return NO_SPAN
    return _Use(span)


class _Use(_ActiveSpan):
    __slots__ = ()

    def __exit__(
        self,
        typ: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        otel_context.detach(self.token)  # type: ignore[arg-type]


def current_context() -> Context:
    """The current trace context, to parent spans started later elsewhere (another task)."""
    return otel_context.get_current()


def extract(carrier: Mapping[str, str]) -> Context | None:
    """The trace context that `traceparent`/`tracestate` in `carrier` continue; None when it
    holds no valid `traceparent` (a new trace starts)."""
    ctx = PROPAGATOR.extract(carrier)
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


def inject(carrier: dict[str, str], context: Context | None = None) -> dict[str, str]:
    """`carrier` with the trace context of `context` (default: the current one) written in."""
    PROPAGATOR.inject(carrier, context=context)
    return carrier


# --- gRPC --------------------------------------------------------------------------------------


def _method_name(method: str | bytes) -> str:
    return method.decode() if isinstance(method, bytes) else method


def rpc_attributes(method: str) -> dict[str, Any]:
    """OpenTelemetry's RPC attributes of a full method name (`/package.Service/Method`)."""
    service, _, name = method.lstrip("/").rpartition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}


def span_name(method: str) -> str:
    """`package.Service/Method`, as OpenTelemetry's RPC conventions name RPC spans."""
    return method.lstrip("/")


def _traced(method: str) -> bool:
    return not method.startswith(UNTRACED_SERVICES)


def _set_code(span: Span, code: grpc.StatusCode, *, server: bool) -> None:
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code is grpc.StatusCode.OK:
        return
    if not server or code in SERVER_ERRORS:
        span.set_attribute("error.type", code.name)
        span.set_status(Status(StatusCode.ERROR, code.name))


class ServerTracing(grpc.aio.ServerInterceptor):
    """A server span per call, continuing the caller's trace from the call's metadata.

    It sits outside the error boundary (`grpc_server.ErrorInterceptor`), so it sees the status
    the caller gets."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = _method_name(handler_call_details.method)  # type: ignore[attr-defined]
        if handler is None or not _traced(method):
            return handler
        metadata = handler_call_details.invocation_metadata or ()  # type: ignore[attr-defined]
        carrier = {k: v for k, v in metadata if k in TRACE_HEADERS and isinstance(v, str)}
        parent = extract(carrier) if carrier else None
        name = span_name(method)
        attributes = rpc_attributes(method)

        def start() -> Span:
            return self.tracer.start_span(
                name, context=parent, kind=SpanKind.SERVER, attributes=attributes
            )

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _traced_unary(handler.unary_unary, start),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            behavior = handler.unary_stream
            wrapped = (
                _traced_stream(behavior, start)
                if inspect.isasyncgenfunction(behavior)
                else _traced_unary(behavior, start)
            )
            return grpc.unary_stream_rpc_method_handler(
                wrapped,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


def _end_server_span(
    span: Span, context: grpc.aio.ServicerContext, exc: BaseException | None
) -> None:
    code = context.code()
    if code is None:
        code = grpc.StatusCode.CANCELLED if exc is not None else grpc.StatusCode.OK
    _set_code(span, code, server=True)
    span.end()


def _traced_unary(
    behavior: Callable[..., Awaitable[Any]], start: Callable[[], Span]
) -> Callable[..., Awaitable[Any]]:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
        span = start()
        token = otel_context.attach(trace.set_span_in_context(span))
        failure: BaseException | None = None
        try:
            return await behavior(request, context)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            otel_context.detach(token)
            _end_server_span(span, context, failure)

    return wrapper


def _traced_stream(
    behavior: Callable[..., AsyncIterator[Any]], start: Callable[[], Span]
) -> Callable[..., AsyncIterator[Any]]:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        span = start()
        # The handler's messages are produced in this call's own task, so the span stays
        # current between them.
        token = otel_context.attach(trace.set_span_in_context(span))
        failure: BaseException | None = None
        try:
            async for item in behavior(request, context):
                yield item
        except BaseException as exc:
            failure = exc
            raise
        finally:
            otel_context.detach(token)
            _end_server_span(span, context, failure)

    return wrapper


class _ClientTracing:
    """A client span per call, its context sent in the call's metadata (`traceparent`)."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer

    def _start(self, details: grpc.aio.ClientCallDetails) -> tuple[Span, Any]:
        method = _method_name(details.method)
        span = self.tracer.start_span(
            span_name(method), kind=SpanKind.CLIENT, attributes=rpc_attributes(method)
        )
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        for key, value in inject({}, trace.set_span_in_context(span)).items():
            metadata[key] = value
        return span, details._replace(metadata=metadata)


# grpc.aio files an interceptor under the first call type it implements, so each type has its
# own class.
class UnaryClientTracing(_ClientTracing, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        if not _traced(_method_name(client_call_details.method)):
            return await continuation(client_call_details, request)
        span, details = self._start(client_call_details)
        try:
            call = await continuation(details, request)
            # The caller awaits the same call for its answer or its error.
            code = await call.code()
        except BaseException as exc:
            mark_failed(span, exc)
            span.end()
            raise
        _set_code(span, code, server=False)
        span.end()
        return call


class StreamClientTracing(_ClientTracing, grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, tracer: trace.Tracer) -> None:
        super().__init__(tracer)
        # The tasks that end the spans of server-streaming calls, referenced until they ran.
        self._pending: set[asyncio.Task[None]] = set()

    async def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        if not _traced(_method_name(client_call_details.method)):
            return await continuation(client_call_details, request)
        span, details = self._start(client_call_details)
        try:
            call = await continuation(details, request)
        except BaseException as exc:
            mark_failed(span, exc)
            span.end()
            raise
        # The span lasts as long as the stream: it ends when the call has a status (finished,
        # failed, or cancelled by the caller).
        task = asyncio.get_running_loop().create_task(_end_with(span, call))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return call


async def _end_with(span: Span, call: Any) -> None:
    try:
        code = await call.code()
    except BaseException as exc:
        mark_failed(span, exc)
        span.end()
        raise
    _set_code(span, code, server=False)
    span.end()
