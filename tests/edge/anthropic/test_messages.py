"""The Messages route's model names, reservation bounds and stream relay."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.edge.anthropic.messages import (
    MessagesCodec,
    anthropic_model,
    messages_prompt_bound,
    usage_of,
)
from services.edge.errors import APIError
from services.edge.openai.bounds import FIXED_OVERHEAD_TOKENS, MESSAGE_OVERHEAD_TOKENS
from services.edge.providers.base import SSEEvent


@pytest.mark.parametrize(
    ("model", "name"),
    [("claude-3-5-haiku-latest", "claude-3-5-haiku-latest"),
     ("anthropic/claude-sonnet-4-0", "claude-sonnet-4-0")],
)  # fmt: skip
def test_model_names(model: str, name: str) -> None:
    assert anthropic_model({"model": model}) == name


@pytest.mark.parametrize("model", ["smollm2-135m-instruct", "openai/gpt-4o", "", None, 3])
def test_other_models_are_refused_naming_the_field(model: Any) -> None:
    with pytest.raises(APIError) as err:
        anthropic_model({"model": model})
    assert (err.value.status, err.value.param) == (400, "model")
    assert err.value.anthropic_body()["error"]["type"] == "invalid_request_error"


def test_images_cost_the_models_maximum_documents_the_context() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "A" * 5000}}  # fmt: skip
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}, image]}]}
    raw = len(json.dumps(body))
    expected = raw - 5000 + 700 + MESSAGE_OVERHEAD_TOKENS + FIXED_OVERHEAD_TOKENS
    assert messages_prompt_bound(body, raw, 700) == expected
    nested = {"type": "tool_result", "tool_use_id": "t", "content": [image]}
    body = {"messages": [{"role": "user", "content": [nested]}]}
    raw = len(json.dumps(body))
    assert messages_prompt_bound(body, raw, 700) == raw - 5000 + 700 + 16 + 96
    doc = {"type": "document", "source": {"type": "base64", "data": "JVBE"}}
    assert messages_prompt_bound({"messages": [{"role": "user", "content": [doc]}]}, 50, 1) is None


def event(kind: str, **payload: Any) -> SSEEvent:
    return SSEEvent(kind, json.dumps({"type": kind, **payload}))


def test_events_pass_unchanged_and_the_end_waits_for_settlement() -> None:
    codec = MessagesCodec()
    stream = [
        event("message_start", message={"usage": {"input_tokens": 10,
                                                   "cache_read_input_tokens": 5}}),
        event("content_block_start", index=0, content_block={"type": "text", "text": ""}),
        event("ping"),
        event("content_block_delta", index=0, delta={"type": "text_delta", "text": "Hi"}),
        event("content_block_stop", index=0),
        event("message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": 3}),
        event("message_stop"),
    ]  # fmt: skip
    frames = [f for e in stream for f in codec.frames(e)]
    assert frames == [f"event: {e.event}\ndata: {e.data}\n\n".encode() for e in stream[:-1]]
    assert codec.finished
    assert codec.closing() == [f"event: message_stop\ndata: {stream[-1].data}\n\n".encode()]
    assert codec.usage() == (15, 3)


def test_usage_of() -> None:
    assert usage_of({"input_tokens": 3, "cache_creation_input_tokens": 2,
                     "output_tokens": 4}) == (5, 4)  # fmt: skip
    assert usage_of(None) == (0, 0)


def test_error_frame_is_anthropics_event() -> None:
    frame = MessagesCodec().error_frame(APIError(502, "broke"))
    assert frame.startswith(b"event: error\ndata: ")
    body = json.loads(frame.split(b"data: ", 1)[1])
    assert body == {"type": "error", "error": {"type": "api_error", "message": "broke"}}
