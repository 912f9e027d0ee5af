"""The edge's server span per HTTP request: named by method and route template, continuing a
client's traceparent, probes untraced, failures marked, and nothing of the headers recorded."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from starlette.testclient import TestClient

from services.common.settings import Settings
from services.common.tracing import Tracing
from services.edge.app import Boundary, create_app
from services.edge.traces import HTTPTracing

SECRET = "sk-sluice-not-for-traces"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def client(exporter: InMemorySpanExporter) -> Iterator[TestClient]:
    tracing = Tracing.with_processors("edge", [SimpleSpanProcessor(exporter)])
    # Without the lifespan: no backend runs here, so a route that needs one fails with a 500.
    yield TestClient(create_app(Settings(), tracing=tracing), raise_server_exceptions=False)


def only(exporter: InMemorySpanExporter) -> ReadableSpan:
    (span,) = exporter.get_finished_spans()
    return span


def test_the_middleware_is_there_only_when_tracing_is_on() -> None:
    off = create_app(Settings())
    on = create_app(Settings(), tracing=Tracing.with_processors("edge", []))
    assert not any(m.cls is HTTPTracing for m in off.user_middleware)
    assert [m.cls for m in on.user_middleware] == [Boundary, HTTPTracing]


def test_a_request_continues_the_clients_trace_under_its_route(
    client: TestClient, exporter: InMemorySpanExporter
) -> None:
    resp = client.get(
        "/v1/responses/resp_0123",
        headers={
            "authorization": f"Bearer {SECRET}",
            "traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01",
            "tracestate": "vendor=1",
        },
    )
    span = only(exporter)
    assert span.name == "GET /v1/responses/{response_id}"
    assert span.kind is SpanKind.SERVER
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None and format(span.parent.span_id, "016x") == CLIENT_SPAN
    assert span.attributes is not None
    assert span.attributes["http.route"] == "/v1/responses/{response_id}"
    assert span.attributes["url.path"] == "/v1/responses/resp_0123"
    assert span.attributes["http.response.status_code"] == resp.status_code
    assert SECRET not in span.to_json()


def test_without_context_the_edge_starts_the_trace(
    client: TestClient, exporter: InMemorySpanExporter
) -> None:
    assert client.get("/nowhere", headers={"traceparent": "not-a-traceparent"}).status_code == 404
    span = only(exporter)
    assert span.parent is None
    assert span.name == "GET"  # no route matched: the method alone
    assert span.attributes is not None
    assert "http.route" not in span.attributes
    assert span.status.status_code is StatusCode.UNSET


def test_probes_are_not_traced(client: TestClient, exporter: InMemorySpanExporter) -> None:
    assert client.get("/healthz").status_code == 200
    assert exporter.get_finished_spans() == ()


def test_a_server_error_marks_the_span(client: TestClient, exporter: InMemorySpanExporter) -> None:
    assert (
        client.get("/v1/models", headers={"authorization": f"Bearer {SECRET}"}).status_code == 500
    )
    span = only(exporter)
    assert span.name == "GET /v1/models"
    assert span.attributes is not None
    assert span.attributes["http.response.status_code"] == 500
    assert span.status.status_code is StatusCode.ERROR
    assert not span.events  # the exception's message is not recorded
