"""OpenTelemetry's GenAI conventions for the spans of a generation: at the edge (the client of a
hosted model or of an organization's provider) and in the engine (the server that samples).

Only what the conventions name and Sluice may show: operation, provider, models, sampling
settings, token counts, finish reasons and time to first token. Never the messages, the prompt,
the output or tool arguments (`gen_ai.input.messages` and its kind are opt-in in the conventions
and stay out here: traces go to operators who must not read customers' text).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from opentelemetry.trace import Span

from services.pb.engine.v1 import engine_pb2

OPERATION = "gen_ai.operation.name"
PROVIDER = "gen_ai.provider.name"
# The name before gen_ai.provider.name, still the one many tools read.
SYSTEM = "gen_ai.system"
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
RESPONSE_ID = "gen_ai.response.id"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
FINISH_REASONS = "gen_ai.response.finish_reasons"
TIME_TO_FIRST_CHUNK = "gen_ai.response.time_to_first_chunk"
FIRST_TOKEN_EVENT = "gen_ai.first_token"
# Hosted models are Sluice's own: the provider the edge calls for them is "sluice".
HOSTED_PROVIDER = "sluice"

# The operation each endpoint performs, in the conventions' names.
OPERATIONS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "text_completion",
    "/v1/embeddings": "embeddings",
    "/v1/responses": "chat",
    "/v1/messages": "chat",
    # Not a generation, but the provider's answer all the same (Anthropic's token count).
    "/v1/messages/count_tokens": "count_tokens",
}


def operation_of(endpoint: str) -> str:
    return OPERATIONS.get(endpoint, "chat")


def span_name(operation: str, model: str) -> str:
    """`{gen_ai.operation.name} {gen_ai.request.model}`, as the conventions name it."""
    return f"{operation} {model}"


def attributes(operation: str, provider: str, model: str) -> dict[str, Any]:
    return {OPERATION: operation, PROVIDER: provider, SYSTEM: provider, REQUEST_MODEL: model}


def hosted_request_attributes(req: engine_pb2.GenerateRequest) -> dict[str, Any]:
    """A hosted generation's settings as the conventions' `gen_ai.request.*`."""
    out: dict[str, Any] = {}
    if req.HasField("max_tokens"):
        out["gen_ai.request.max_tokens"] = req.max_tokens
    sampling = req.sampling
    for name in ("temperature", "top_p", "top_k", "seed", "presence_penalty", "frequency_penalty"):
        if sampling.HasField(name):
            out[f"gen_ai.request.{name}"] = getattr(sampling, name)
    if req.n > 1:
        out["gen_ai.request.choice.count"] = req.n
    return out


def record_first_token(span: Span, seconds: float) -> None:
    """The moment the first output arrived: an event on the timeline and its delay."""
    span.add_event(FIRST_TOKEN_EVENT)
    span.set_attribute(TIME_TO_FIRST_CHUNK, seconds)


def record_outcome(
    span: Span, input_tokens: int, output_tokens: int, reasons: Sequence[str]
) -> None:
    span.set_attribute(INPUT_TOKENS, input_tokens)
    span.set_attribute(OUTPUT_TOKENS, output_tokens)
    if reasons:
        span.set_attribute(FINISH_REASONS, list(reasons))


class EngineGeneration:
    """The engine's server span of one `Generate`, filled in from the messages it sends."""

    __slots__ = ("span", "started", "first_seen", "reasons")

    def __init__(self, span: Span, req: engine_pb2.GenerateRequest) -> None:
        self.span = span
        self.started = time.monotonic()
        self.first_seen = False
        self.reasons: list[str] = []
        operation = "chat" if req.WhichOneof("input") == "messages" else "text_completion"
        span.set_attributes(attributes(operation, HOSTED_PROVIDER, req.model))
        span.set_attributes(hosted_request_attributes(req))

    def observe(self, msg: engine_pb2.GenerateResponse) -> None:
        if msg.HasField("model"):
            self.span.set_attribute(RESPONSE_MODEL, f"{msg.model.name}@{msg.model.digest}")
        if not self.first_seen and msg.token_count:
            self.first_seen = True
            record_first_token(self.span, time.monotonic() - self.started)
        if msg.finish_reason:
            self.reasons.append(msg.finish_reason)
        if msg.HasField("usage"):
            usage = msg.usage
            record_outcome(self.span, usage.prompt_tokens, usage.completion_tokens, self.reasons)
