"""Relaying an OpenAI stream: chunks pass as sent, with only the documented edits."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.edge.errors import APIError
from services.edge.openai.upstream_chat import OpenAIChatCodec
from services.edge.providers.base import SSEEvent, UpstreamFailure


def chunk(**fields: Any) -> SSEEvent:
    return SSEEvent("", json.dumps({"id": "c", "object": "chat.completion.chunk",
                                    "model": "gpt-4o-mini-2024-07-18", **fields}))  # fmt: skip


STREAM = [
    chunk(choices=[{"index": 0, "delta": {"role": "assistant", "content": ""}}], usage=None),
    chunk(
        choices=[{"index": 0, "delta": {"content": "Hi"}, "logprobs": {"content": []}}], usage=None
    ),  # fmt: skip
    chunk(
        choices=[{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1"}]}}], usage=None
    ),  # fmt: skip
    chunk(choices=[{"index": 0, "delta": {}, "finish_reason": "tool_calls"}], usage=None),
    chunk(choices=[], usage={"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}),
    SSEEvent("", "[DONE]"),
]


def run(codec: OpenAIChatCodec) -> list[dict[str, Any]]:
    out = []
    for event in STREAM:
        for frame in codec.frames(event):
            assert frame.startswith(b"data: ") and frame.endswith(b"\n\n")
            out.append(json.loads(frame[6:]))
        if codec.finished:
            break
    return out


def test_chunks_pass_in_order_with_the_model_named_for_sluice() -> None:
    codec = OpenAIChatCodec("gpt-4o-mini", client_usage=True)
    out = run(codec)
    sent = [json.loads(e.data) for e in STREAM[:-1]]
    assert out == [{**c, "model": "openai/gpt-4o-mini-2024-07-18"} for c in sent]
    assert codec.finished and codec.closing() == [b"data: [DONE]\n\n"]
    assert codec.usage() == (9, 4)


def test_usage_the_client_did_not_ask_for_is_taken_out_again() -> None:
    codec = OpenAIChatCodec("gpt-4o-mini", client_usage=False)
    out = run(codec)
    assert len(out) == 4 and all("usage" not in c for c in out)
    assert codec.usage() == (9, 4)  # still billed with the provider's numbers


def test_a_stream_that_broke_is_billed_its_pieces() -> None:
    codec = OpenAIChatCodec("gpt-4o-mini", client_usage=False)
    for event in STREAM[:3]:
        codec.frames(event)
    assert codec.usage() == (0, 2)


def test_malformed_events_fail_the_stream() -> None:
    with pytest.raises(UpstreamFailure):
        OpenAIChatCodec("m", client_usage=False).frames(SSEEvent("", "{not json"))


def test_the_error_frame_is_openais_shape() -> None:
    frame = OpenAIChatCodec("m", client_usage=False).error_frame(APIError(502, "gone"))
    assert json.loads(frame[6:])["error"]["message"] == "gone"
