"""Tracing: when the environment turns it on, what the process is called, the W3C context
across a real gRPC server and channel (unary and streaming calls, failures, cancellation), and
spans that carry no exception text."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from services.common import tracing
from services.common.channels import aio_channel
from services.common.errors import InvalidArgument
from services.common.grpc_server import RunningServer, start_server

SECRET = "sk-sluice-do-not-trace-me"


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({}, []),
        ({"OTEL_SERVICE_NAME": "x", "OTEL_BSP_SCHEDULE_DELAY": "200"}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "console"}, ["console"]),
        ({"OTEL_TRACES_EXPORTER": "otlp, console,otlp"}, ["otlp", "console"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, []),
        ({"OTEL_SDK_DISABLED": "TRUE", "OTEL_TRACES_EXPORTER": "otlp"}, []),
        ({"OTEL_SDK_DISABLED": "false", "OTEL_TRACES_EXPORTER": "otlp"}, ["otlp"]),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
            ["otlp"],
        ),
    ],
)
def test_tracing_is_off_unless_an_exporter_is_asked_for(
    env: dict[str, str], names: list[str]
) -> None:
    assert tracing.exporter_names(env) == names


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_TRACES_EXPORTER": "zipkin"},
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
        },
    ],
)
def test_an_exporter_this_build_cannot_use_fails_at_start(env: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="not supported"):
        tracing.exporter_names(env)


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({}, "sluice-metering"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,service.name=meter"}, "meter"),
        (
            {"OTEL_SERVICE_NAME": "billing", "OTEL_RESOURCE_ATTRIBUTES": "service.name=meter"},
            "billing",
        ),
    ],
)
def test_service_name(env: dict[str, str], name: str) -> None:
    assert tracing.service_name("metering", env) == name


def test_off_by_default_costs_nothing() -> None:
    off = tracing.setup_tracing("edge", {})
    assert not off.enabled
    assert off.server_interceptors() == []
    assert off.client_interceptors() is None
    with off.span("authenticate") as span:
        assert not span.is_recording()
    assert off.span("a") is off.span("b")  # one shared no-op
    assert not off.start("chat x").is_recording()
    off.shutdown()


def test_setup_with_an_endpoint_exports_otlp(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:9/v1/traces"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    on = tracing.setup_tracing("auth", env)
    try:
        assert on.enabled
        assert on.service == "sluice-auth"
        assert on.provider is not None
        assert on.provider.resource.attributes["service.name"] == "sluice-auth"
        assert on.provider.resource.attributes["service.namespace"] == "sluice"
    finally:
        on.shutdown()  # nothing was recorded, so nothing is sent


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def _tracing(service: str, exporter: InMemorySpanExporter) -> tracing.Tracing:
    return tracing.Tracing.with_processors(service, [SimpleSpanProcessor(exporter)])


def test_a_failed_block_names_its_error_not_its_message(exporter: InMemorySpanExporter) -> None:
    on = _tracing("edge", exporter)
    with pytest.raises(InvalidArgument), on.span("admit"):
        raise InvalidArgument(f"bad key {SECRET}", code="invalid_api_key")
    with pytest.raises(ValueError), on.span("settle"):
        raise ValueError(SECRET)
    admit, settle = exporter.get_finished_spans()
    assert admit.attributes == {"error.type": "invalid_api_key"}
    assert settle.attributes == {"error.type": "ValueError"}
    for span in (admit, settle):
        assert span.status.status_code is StatusCode.ERROR
        assert SECRET not in span.to_json()
        assert not span.events


def test_extract_takes_w3c_context_only() -> None:
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    ctx = tracing.extract({"traceparent": parent, "tracestate": "vendor=x"})
    assert ctx is not None
    assert tracing.inject({}, ctx)["traceparent"] == parent
    assert tracing.extract({"traceparent": "garbage"}) is None
    assert tracing.extract({}) is None


# --- across a real gRPC server and channel -----------------------------------------------------


async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    if request == b"bad":
        raise InvalidArgument(f"no {SECRET}", param="x")
    if request == b"boom":
        raise RuntimeError(SECRET)
    return request


async def count(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    for i in range(int(request)):
        await asyncio.sleep(0.01)
        yield str(i).encode()


def _register(server: grpc.aio.Server) -> None:
    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(echo),
        "Count": grpc.unary_stream_rpc_method_handler(count),
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("test.v1.Test", handlers),)
    )


@pytest.fixture
async def server(exporter: InMemorySpanExporter) -> AsyncIterator[RunningServer]:
    running = await start_server(
        "127.0.0.1:0", _register, ["test.v1.Test"], _tracing("auth", exporter)
    )
    yield running
    await running.server.stop(0)


@pytest.fixture
def edge(exporter: InMemorySpanExporter) -> Iterator[tracing.Tracing]:
    on = _tracing("edge", exporter)
    yield on
    on.shutdown()


def _by_service(spans: tuple[ReadableSpan, ...], service: str) -> list[ReadableSpan]:
    return [s for s in spans if s.resource.attributes["service.name"] == service]


async def test_the_trace_crosses_unary_calls(
    server: RunningServer, edge: tracing.Tracing, exporter: InMemorySpanExporter
) -> None:
    addr = f"127.0.0.1:{server.port}"
    async with aio_channel(addr, interceptors=edge.client_interceptors()) as channel:
        echo_call = channel.unary_unary("/test.v1.Test/Echo")
        with edge.span("authenticate") as outer:
            assert await echo_call(b"hi", timeout=5) == b"hi"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await echo_call(b"bad", timeout=5)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await echo_call(b"boom", timeout=5)
        assert failed.value.code() == grpc.StatusCode.INTERNAL
        # Health checks stay out of traces.
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)

    spans = exporter.get_finished_spans()
    clients = _by_service(spans, "edge")
    servers = _by_service(spans, "auth")
    assert [s.name for s in clients] == ["test.v1.Test/Echo", "authenticate"] + [
        "test.v1.Test/Echo"
    ] * 2
    assert [s.name for s in servers] == ["test.v1.Test/Echo"] * 3
    ok_client, auth, bad_client, boom_client = clients
    ok_server, bad_server, boom_server = servers

    assert ok_client.kind is SpanKind.CLIENT and ok_server.kind is SpanKind.SERVER
    assert ok_client.parent is not None and ok_client.parent.span_id == auth.context.span_id
    for client, srv in (
        (ok_client, ok_server),
        (bad_client, bad_server),
        (boom_client, boom_server),
    ):
        assert srv.parent is not None
        assert srv.parent.span_id == client.context.span_id
        assert srv.parent.is_remote
        assert srv.context.trace_id == client.context.trace_id
    assert ok_server.context.trace_id == outer.get_span_context().trace_id
    assert ok_server.attributes == {
        "rpc.system": "grpc",
        "rpc.service": "test.v1.Test",
        "rpc.method": "Echo",
        "rpc.grpc.status_code": 0,
    }
    # The caller's INVALID_ARGUMENT is not the server's failure; INTERNAL is; a client span
    # fails with any non-OK status.
    assert bad_server.status.status_code is StatusCode.UNSET
    assert bad_server.attributes["rpc.grpc.status_code"] == 3
    assert boom_server.status.status_code is StatusCode.ERROR
    assert boom_server.attributes["error.type"] == "INTERNAL"
    assert bad_client.status.status_code is StatusCode.ERROR
    assert bad_client.attributes["error.type"] == "INVALID_ARGUMENT"
    assert all(SECRET not in s.to_json() for s in spans)


async def test_a_call_without_context_starts_a_trace_in_the_server(
    server: RunningServer, exporter: InMemorySpanExporter
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        assert await channel.unary_unary("/test.v1.Test/Echo")(b"x", timeout=5) == b"x"
    (span,) = exporter.get_finished_spans()
    assert span.parent is None
    assert span.kind is SpanKind.SERVER


async def test_stream_spans_last_as_long_as_the_stream(
    server: RunningServer, edge: tracing.Tracing, exporter: InMemorySpanExporter
) -> None:
    async with aio_channel(
        f"127.0.0.1:{server.port}", interceptors=edge.client_interceptors()
    ) as ch:
        stream = ch.unary_stream("/test.v1.Test/Count")
        got = [msg async for msg in stream(b"5", timeout=5)]
        assert got == [str(i).encode() for i in range(5)]
        call = stream(b"1000", timeout=5)
        assert await call.read() == b"0"
        call.cancel()
        for _ in range(100):
            if len(exporter.get_finished_spans()) == 4:
                break
            await asyncio.sleep(0.02)

    spans = exporter.get_finished_spans()
    assert len(spans) == 4
    by_code = {
        (s.attributes["rpc.grpc.status_code"], s.kind): s for s in spans if s.attributes is not None
    }
    done_client, done_server = by_code[0, SpanKind.CLIENT], by_code[0, SpanKind.SERVER]
    assert done_server.end_time is not None and done_server.start_time is not None
    assert done_server.end_time - done_server.start_time >= 40_000_000  # five ticks of 10 ms
    assert done_server.parent is not None
    assert done_server.parent.span_id == done_client.context.span_id
    # A stream the caller cancelled ends both spans with CANCELLED (1).
    cancelled_client, cancelled_server = by_code[1, SpanKind.CLIENT], by_code[1, SpanKind.SERVER]
    assert cancelled_server.parent is not None
    assert cancelled_server.parent.span_id == cancelled_client.context.span_id
    assert cancelled_client.status.status_code is StatusCode.ERROR
