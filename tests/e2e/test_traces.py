"""Traces across the four processes: the stack runs with `OTEL_*` pointing at a loopback OTLP/HTTP
receiver in this test, which decodes what every process exports (`ExportTraceServiceRequest`).

A streamed hosted chat request and two bring-your-own-key ones (OpenAI whole, Anthropic
streamed and translated), each sent with a client `traceparent`, must each come back as one
trace under the client's trace id: spans from the edge, auth, metering and (hosted only) the
engine, every parent in the trace or the client's own span, the governance spans and the GenAI
attributes in place. A request without a `traceparent`
starts its trace at the edge; an unsampled one leaves no spans. Nothing any process exported
holds the API key, a provider key, the prompt or the answer."""

from __future__ import annotations

import gzip
import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto

from tests.e2e.processes import Services
from tests.e2e.providers import CLAUDE, GPT, provider_secret

HOSTED = "smollm2-135m-instruct"
PROMPT = "Name one river of the quiet heron valley 7f3a9c."
SERVICES = {"sluice-edge", "sluice-auth", "sluice-metering", "sluice-engine"}
WAIT_S = 30.0
KINDS = {v: k.removeprefix("SPAN_KIND_") for k, v in SpanProto.SpanKind.items()}


def _value(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, which) if which else None


@dataclass
class Span:
    service: str
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]
    events: list[str]
    error: bool


@dataclass
class Receiver:
    """An OTLP/HTTP trace receiver on loopback: the raw requests and the spans they carried."""

    server: ThreadingHTTPServer
    raw: list[bytes] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, body: bytes) -> None:
        req = ExportTraceServiceRequest.FromString(body)
        got = []
        for rs in req.resource_spans:
            resource = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    got.append(
                        Span(
                            service=str(resource.get("service.name")),
                            name=s.name,
                            kind=KINDS[s.kind],
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_id=s.parent_span_id.hex(),
                            attributes={a.key: _value(a.value) for a in s.attributes},
                            events=[e.name for e in s.events],
                            error=s.status.code == s.status.STATUS_CODE_ERROR,
                        )
                    )
        with self.lock:
            self.raw.append(body)
            self.spans.extend(got)

    def trace(self, trace_id: str) -> list[Span]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def trace_roots(self) -> list[Span]:
        with self.lock:
            return [s for s in self.spans if not s.parent_id]

    def wait_for(self, trace_id: str, last: tuple[str, str]) -> list[Span]:
        """The trace's spans once the span named `last[1]` of service `last[0]` came (the final
        settlement in metering), and a moment more for stragglers of the same batch."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            if any((s.service, s.name) == last for s in self.trace(trace_id)):
                time.sleep(0.5)
                return self.trace(trace_id)
            time.sleep(0.1)
        spans = self.trace(trace_id)
        raise AssertionError(
            f"no {last} in trace {trace_id}: {[(s.service, s.name) for s in spans]}"
        )


def start_receiver() -> Receiver:
    receiver: Receiver

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            assert self.path == "/v1/traces", self.path
            assert self.headers.get("content-type") == "application/x-protobuf"
            receiver.add(body)
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    receiver = Receiver(ThreadingHTTPServer(("127.0.0.1", 0), Handler))
    threading.Thread(target=receiver.server.serve_forever, daemon=True).start()
    return receiver


@dataclass
class Traced:
    services: Services
    receiver: Receiver
    key: str
    secrets: list[str]


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traced]:
    """The four services (and the provider stand-ins) on SQLite, exporting to the receiver."""
    receiver = start_receiver()
    tmp: Path = tmp_path_factory.mktemp("traces")
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    services = Services.create(tmp, f"sqlite+aiosqlite:///{tmp / 'sluice.db'}", env)
    try:
        services.start_fakes()
        services.start_all()
        org = "traced"
        services.cli("orgs", "create", org)
        provider_keys = [provider_secret(p) for p in ("openai", "anthropic")]
        for provider, secret in zip(("openai", "anthropic"), provider_keys, strict=True):
            services.cli(
                "providers", "add", "--org", org, "--provider", provider, "--api-key", secret
            )
        key = services.new_key(org, "traced")
        yield Traced(services, receiver, key, [key, *provider_keys])
    finally:
        services.stop_all()
        receiver.server.shutdown()
        receiver.server.server_close()


def _traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def _chat(traced: Traced, body: dict[str, Any], traceparent: str | None) -> httpx.Response:
    headers = {"authorization": f"Bearer {traced.key}"}
    if traceparent:
        headers["traceparent"] = traceparent
    url = traced.services.edges["edge"].base_url + "/chat/completions"
    resp = httpx.post(url, json=body, headers=headers, timeout=120)
    assert resp.status_code == 200, resp.text
    return resp


def _check_tree(spans: list[Span], client_span: str) -> Span:
    """Every parent is in the trace or is the client's span; returns the edge's root span."""
    ids = {s.span_id for s in spans}
    assert len(ids) == len(spans)
    for s in spans:
        assert s.parent_id in ids or s.parent_id == client_span, (s.service, s.name)
    (root,) = [s for s in spans if s.parent_id == client_span]
    assert (root.service, root.kind) == ("sluice-edge", "SERVER")
    return root


def _one(spans: list[Span], service: str, name: str, kind: str | None = None) -> Span:
    found = [s for s in spans if (s.service, s.name) == (service, name)]
    if kind is not None:
        found = [s for s in found if s.kind == kind]
    assert len(found) == 1, (service, name, kind, [(s.service, s.name, s.kind) for s in spans])
    return found[0]


def _check_rpc(spans: list[Span], caller: Span, service: str, method: str) -> None:
    """`caller` (an edge span) made the call, and the called service's span is its child."""
    name = method.lstrip("/")
    client = _one(spans, "sluice-edge", name, "CLIENT")
    server = _one(spans, service, name, "SERVER")
    assert client.parent_id == caller.span_id
    assert server.parent_id == client.span_id
    assert server.attributes["rpc.system"] == "grpc"
    assert server.attributes["rpc.grpc.status_code"] == 0
    assert not client.error and not server.error


def _sequence(traced: Traced) -> dict[str, Any]:
    """Sends the requests of the tests, once: hosted, BYOK (OpenAI whole, Anthropic streamed),
    unsampled, without context. (The
    edge caches a principal for a second: the unsampled one, sent with the hosted one's key and
    model, is the one that may skip auth.)"""
    hosted_parent, hosted_id, hosted_span = _traceparent()
    hosted = _chat(traced, _hosted_body(), hosted_parent)
    byok_parent, byok_id, byok_span = _traceparent()
    byok_body = {"model": GPT, "messages": [{"role": "user", "content": PROMPT}]}
    byok = _chat(traced, byok_body, byok_parent)
    claude_parent, claude_id, claude_span = _traceparent()
    claude_body = {
        "model": CLAUDE,
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    claude = _chat(traced, claude_body, claude_parent)
    unsampled, unsampled_id, _ = _traceparent()
    _chat(traced, _hosted_body(), unsampled[:-2] + "00")
    models = httpx.get(
        traced.services.edges["edge"].base_url + "/models",
        headers={"authorization": f"Bearer {traced.key}"},
        timeout=30,
    )
    assert models.status_code == 200
    return {
        "unsampled": unsampled_id,
        "hosted": (hosted_id, hosted_span, hosted),
        "byok": (byok_id, byok_span, byok),
        "claude": (claude_id, claude_span, claude),
    }


def _hosted_body() -> dict[str, Any]:
    return {
        "model": HOSTED,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 12,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


@pytest.fixture(scope="module")
def sent(traced: Traced) -> dict[str, Any]:
    return _sequence(traced)


def _streamed(resp: httpx.Response) -> tuple[str, dict[str, int], list[str]]:
    text, usage, reasons = "", {}, []
    for line in resp.text.splitlines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line.removeprefix("data: "))
        for choice in chunk["choices"]:
            text += choice["delta"].get("content") or ""
            if choice.get("finish_reason"):
                reasons.append(choice["finish_reason"])
        if chunk.get("usage"):
            usage = chunk["usage"]
    return text, usage, reasons


def test_a_hosted_request_is_one_trace_across_the_four_services(
    traced: Traced, sent: dict[str, Any]
) -> None:
    trace_id, client_span, resp = sent["hosted"]
    spans = traced.receiver.wait_for(
        trace_id, ("sluice-metering", "sluice.metering.v1.MeteringService/Settle")
    )
    assert {s.service for s in spans} == SERVICES
    root = _check_tree(spans, client_span)
    assert root.name == "POST /v1/chat/completions"
    assert root.attributes["http.request.method"] == "POST"
    assert root.attributes["http.route"] == "/v1/chat/completions"
    assert root.attributes["http.response.status_code"] == 200

    authenticate = _one(spans, "sluice-edge", "authenticate")
    admit = _one(spans, "sluice-edge", "admit")
    generation = _one(spans, "sluice-edge", f"chat {HOSTED}")
    settle = _one(spans, "sluice-edge", "settle")
    for span in (authenticate, admit, generation, settle):
        assert span.parent_id == root.span_id, span.name
        assert not span.error, span.name
    _check_rpc(spans, authenticate, "sluice-auth", "/sluice.auth.v1.AuthService/Authenticate")
    _check_rpc(spans, admit, "sluice-metering", "/sluice.metering.v1.MeteringService/Admit")
    _check_rpc(spans, generation, "sluice-engine", "/sluice.engine.v1.EngineService/Generate")
    _check_rpc(spans, settle, "sluice-metering", "/sluice.metering.v1.MeteringService/Settle")
    assert authenticate.attributes["sluice.org.id"]
    assert authenticate.attributes["sluice.key.id"].startswith("key_")

    _, usage, reasons = _streamed(resp)
    attrs = generation.attributes
    assert generation.kind == "CLIENT"
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == attrs["gen_ai.system"] == "sluice"
    assert attrs["gen_ai.request.model"] == HOSTED
    assert attrs["gen_ai.response.model"].startswith(f"{HOSTED}@sha256:")
    assert attrs["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert attrs["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert attrs["gen_ai.response.finish_reasons"] == reasons
    assert attrs["gen_ai.request.max_tokens"] == 12
    assert attrs["sluice.request.id"] == resp.headers["x-request-id"]
    assert 0 < attrs["gen_ai.response.time_to_first_chunk"] < 60
    assert "gen_ai.first_token" in generation.events

    engine = _one(spans, "sluice-engine", "sluice.engine.v1.EngineService/Generate")
    # The edge asks the engine for the pinned export it resolved.
    assert engine.attributes["gen_ai.request.model"] == attrs["gen_ai.response.model"]
    assert engine.attributes["gen_ai.response.model"] == attrs["gen_ai.response.model"]
    assert engine.attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert engine.attributes["gen_ai.response.finish_reasons"] == reasons
    assert "gen_ai.first_token" in engine.events


def test_a_byok_request_is_one_trace_without_the_engine(
    traced: Traced, sent: dict[str, Any]
) -> None:
    trace_id, client_span, resp = sent["byok"]
    spans = traced.receiver.wait_for(
        trace_id, ("sluice-metering", "sluice.metering.v1.MeteringService/Settle")
    )
    # A provider's model never crosses the engine.
    assert {s.service for s in spans} == SERVICES - {"sluice-engine"}
    root = _check_tree(spans, client_span)
    generation = _one(spans, "sluice-edge", "chat openai/gpt-4o-mini")
    assert generation.parent_id == root.span_id
    answer = resp.json()
    attrs = generation.attributes
    assert attrs["gen_ai.provider.name"] == "openai"
    assert attrs["gen_ai.request.model"] == GPT
    assert attrs["gen_ai.usage.input_tokens"] == answer["usage"]["prompt_tokens"]
    assert attrs["gen_ai.usage.output_tokens"] == answer["usage"]["completion_tokens"]
    assert attrs["gen_ai.response.finish_reasons"] == [answer["choices"][0]["finish_reason"]]
    (upstream,) = [
        s
        for s in spans
        if s.kind == "CLIENT"
        and s.parent_id == generation.span_id
        and "http.request.method" in s.attributes
    ]
    assert upstream.name == "POST"
    assert upstream.attributes["http.response.status_code"] == 200
    assert upstream.attributes["server.address"] == "127.0.0.1"
    assert upstream.attributes["url.full"].endswith("/v1/chat/completions")
    _check_rpc(
        spans,
        _one(spans, "sluice-edge", "settle"),
        "sluice-metering",
        "/sluice.metering.v1.MeteringService/Settle",
    )


def test_a_translated_byok_stream_is_one_trace_ended_with_the_stream(
    traced: Traced, sent: dict[str, Any]
) -> None:
    trace_id, client_span, resp = sent["claude"]
    spans = traced.receiver.wait_for(
        trace_id, ("sluice-metering", "sluice.metering.v1.MeteringService/Settle")
    )
    assert {s.service for s in spans} == SERVICES - {"sluice-engine"}
    root = _check_tree(spans, client_span)
    generation = _one(spans, "sluice-edge", f"chat {CLAUDE}")
    assert generation.parent_id == root.span_id
    text, usage, reasons = _streamed(resp)
    assert text and reasons
    attrs = generation.attributes
    assert attrs["gen_ai.provider.name"] == "anthropic"
    assert attrs["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert attrs["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    # As the translated stream's last chunk gave it to the client.
    assert attrs["gen_ai.response.finish_reasons"] == reasons
    assert "gen_ai.first_token" in generation.events
    (upstream,) = [s for s in spans if s.kind == "CLIENT" and s.name == "POST"]
    assert upstream.parent_id == generation.span_id
    assert upstream.attributes["url.full"].endswith("/v1/messages")


def _untraced_root(traced: Traced) -> Span:
    """The edge's span of the `GET /v1/models` sent without a traceparent, once it came."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        roots = [s for s in traced.receiver.trace_roots() if s.name == "GET /v1/models"]
        if roots:
            (root,) = roots
            time.sleep(0.5)
            return root
        time.sleep(0.1)
    raise AssertionError("no span of GET /v1/models")


def test_a_request_without_context_starts_its_trace_at_the_edge(
    traced: Traced, sent: dict[str, Any]
) -> None:
    root = _untraced_root(traced)
    assert root.service == "sluice-edge" and root.kind == "SERVER"
    assert root.attributes["http.response.status_code"] == 200
    spans = traced.receiver.trace(root.trace_id)
    _check_rpc(
        spans,
        _one(spans, "sluice-edge", "authenticate"),
        "sluice-auth",
        "/sluice.auth.v1.AuthService/Authenticate",
    )
    # The engine's model list, called under the request's own span.
    _check_rpc(spans, root, "sluice-engine", "/sluice.engine.v1.EngineService/ListModels")


def test_an_unsampled_request_leaves_no_spans(traced: Traced, sent: dict[str, Any]) -> None:
    # Sent before the request without context, whose spans came: its own would have come too.
    _untraced_root(traced)
    assert traced.receiver.trace(sent["unsampled"]) == []


def test_no_secret_and_no_text_in_anything_exported(traced: Traced, sent: dict[str, Any]) -> None:
    for trace_id, *_ in (sent["hosted"], sent["byok"], sent["claude"]):
        traced.receiver.wait_for(
            trace_id, ("sluice-metering", "sluice.metering.v1.MeteringService/Settle")
        )
    text, _, _ = _streamed(sent["hosted"][2])
    answer = sent["byok"][2].json()["choices"][0]["message"]["content"]
    claude, _, _ = _streamed(sent["claude"][2])
    # Whole, and their random tails (a key cut short is still a leak).
    forbidden = [*traced.secrets, *(s[-16:] for s in traced.secrets), PROMPT, "quiet heron"]
    forbidden += [t for t in (text.strip(), answer.strip(), claude.strip()) if len(t) >= 12]
    with traced.receiver.lock:
        raw = list(traced.receiver.raw)
        spans = list(traced.receiver.spans)
    assert raw and spans
    # The wire bytes hold every name, attribute, event and status message as UTF-8.
    for body in raw:
        for secret in forbidden:
            assert secret.encode() not in body, secret
    for span in spans:
        for value in span.attributes.values():
            for secret in forbidden:
                assert secret not in str(value), (span.name, secret)
