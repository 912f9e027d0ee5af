"""The GenAI attributes of a generation's span: the operation by endpoint, a hosted request's
settings, and what the engine's messages tell (model, first token, finish reasons, usage)."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.common import genai_spans
from services.common.tracing import Tracing
from services.pb.engine.v1 import engine_pb2


@pytest.mark.parametrize(
    ("endpoint", "operation"),
    [
        ("/v1/chat/completions", "chat"),
        ("/v1/completions", "text_completion"),
        ("/v1/embeddings", "embeddings"),
        ("/v1/responses", "chat"),
        ("/v1/messages", "chat"),
        ("/v1/messages/count_tokens", "count_tokens"),
    ],
)
def test_operation_of_each_endpoint(endpoint: str, operation: str) -> None:
    assert genai_spans.operation_of(endpoint) == operation


def test_hosted_request_settings_only_what_was_set() -> None:
    req = engine_pb2.GenerateRequest(
        model="m",
        max_tokens=64,
        n=3,
        sampling=engine_pb2.SamplingParams(temperature=0.5, seed=7),
        messages=engine_pb2.Messages(messages=[engine_pb2.ChatMessage(role="user", content="hi")]),
    )
    assert genai_spans.hosted_request_attributes(req) == {
        "gen_ai.request.max_tokens": 64,
        "gen_ai.request.temperature": 0.5,
        "gen_ai.request.seed": 7,
        "gen_ai.request.choice.count": 3,
    }
    assert genai_spans.hosted_request_attributes(engine_pb2.GenerateRequest(model="m")) == {}


def test_the_engine_span_from_its_messages() -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing.with_processors("engine", [SimpleSpanProcessor(exporter)])
    req = engine_pb2.GenerateRequest(model="smollm2", prompt="secret prompt", n=2)
    with tracing.span("Generate") as span:
        record = genai_spans.EngineGeneration(span, req)
        model = engine_pb2.ModelInfo(name="smollm2", digest="sha256:ab")
        for msg in (
            engine_pb2.GenerateResponse(model=model),
            engine_pb2.GenerateResponse(text="secret answer", token_count=2, index=0),
            engine_pb2.GenerateResponse(token_count=1, index=1, finish_reason="length"),
            engine_pb2.GenerateResponse(
                index=0,
                finish_reason="stop",
                usage=engine_pb2.Usage(prompt_tokens=5, completion_tokens=3),
            ),
        ):
            record.observe(msg)
    (done,) = exporter.get_finished_spans()
    attrs = dict(done.attributes or {})
    assert 0 <= attrs.pop("gen_ai.response.time_to_first_chunk") < 1
    assert attrs == {
        "gen_ai.operation.name": "text_completion",
        "gen_ai.provider.name": "sluice",
        "gen_ai.system": "sluice",
        "gen_ai.request.model": "smollm2",
        "gen_ai.request.choice.count": 2,
        "gen_ai.response.model": "smollm2@sha256:ab",
        "gen_ai.usage.input_tokens": 5,
        "gen_ai.usage.output_tokens": 3,
        "gen_ai.response.finish_reasons": ("length", "stop"),
    }
    assert [e.name for e in done.events] == ["gen_ai.first_token"]
    assert "secret" not in done.to_json()
