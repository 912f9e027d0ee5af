"""The Responses API for openai/<model>: the body's only edits, its reservation bounds, and its
event stream relayed with the model renamed, usage read, and the terminal event held back."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.edge.errors import APIError
from services.edge.openai import bounds
from services.edge.openai.bounds import FIXED_OVERHEAD_TOKENS as FIXED
from services.edge.openai.bounds import MESSAGE_OVERHEAD_TOKENS as PER_ITEM
from services.edge.openai.bounds import TOOL_OVERHEAD_TOKENS as PER_TOOL
from services.edge.openai.responses_upstream import ResponsesCodec
from services.edge.providers import openai
from services.edge.providers.base import SSEEvent, UpstreamFailure

IMAGE = 1_000
DATA_URL = "data:image/png;base64," + "A" * 4000
BODY: dict[str, Any] = {
    "model": "openai/gpt-4o-mini",
    "input": "Hi",
    "previous_response_id": "resp_abc",
    "tools": [{"type": "web_search"}],
    "store": True,
    "a_field_from_next_month": [1],
}


def test_the_body_changes_only_its_model() -> None:
    out = openai.forward_responses_body(BODY, "gpt-4o-mini", completion_cap=None)
    assert out == {**BODY, "model": "gpt-4o-mini"}
    assert BODY["model"] == "openai/gpt-4o-mini"


@pytest.mark.parametrize(
    ("sent", "cap", "forwarded"), [(None, 512, 512), (2048, 512, 512), (64, 512, 64)]
)
def test_max_output_tokens_is_lowered_under_a_plans_cap(
    sent: int | None, cap: int, forwarded: int
) -> None:
    body = {**BODY} if sent is None else {**BODY, "max_output_tokens": sent}
    assert (
        openai.forward_responses_body(body, "m", completion_cap=cap)["max_output_tokens"]
        == forwarded
    )


def bound(body: dict[str, Any]) -> int | None:
    return bounds.responses_prompt_bound(body, len(json.dumps(body).encode()), IMAGE)


def test_text_and_function_tools_are_bounded_by_bytes_and_framing() -> None:
    tool = {"type": "function", "name": "f", "parameters": {"type": "object"}}
    body = {"model": "m", "input": [{"role": "user", "content": "héllo"}], "tools": [tool]}
    assert bound(body) == len(json.dumps(body).encode()) + FIXED + PER_ITEM + PER_TOOL
    text = {"model": "m", "input": "hello"}
    assert bound(text) == len(json.dumps(text).encode()) + FIXED + PER_ITEM


def test_an_image_costs_the_models_maximum_instead_of_its_bytes() -> None:
    part = {"type": "input_image", "image_url": DATA_URL}
    body = {"model": "m", "input": [{"role": "user", "content": [part]}]}
    size = len(json.dumps(body).encode())
    assert bound(body) == size - len(DATA_URL) + IMAGE + FIXED + PER_ITEM


@pytest.mark.parametrize(
    "extra",
    [
        {"previous_response_id": "resp_1"},
        {"conversation": "conv_1"},
        {"prompt": {"id": "pmpt_1"}},
        {"tools": [{"type": "file_search", "vector_store_ids": ["vs"]}]},
        {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
    ],
)
def test_what_the_provider_adds_is_bounded_by_the_context(extra: dict[str, Any]) -> None:
    assert bound({"model": "m", "input": "Hi", **extra}) is None


@pytest.mark.parametrize(
    ("extra", "param"),
    [({"input": 3}, "input"), ({"max_output_tokens": 0}, "max_output_tokens"),
     ({"stream": "yes"}, "stream"), ({"tools": {}}, "tools")],
)  # fmt: skip
def test_the_fields_governance_reads_are_checked(extra: dict[str, Any], param: str) -> None:
    with pytest.raises(APIError) as err:
        bounds.check_responses_body({"model": "m", **extra})
    assert err.value.param == param


def event(kind: str, **fields: Any) -> SSEEvent:
    return SSEEvent(kind, json.dumps({"type": kind, **fields}))


RESPONSE = {"id": "resp_1", "object": "response", "model": "gpt-4o-mini-2024-07-18", "usage": None}
DONE = {**RESPONSE, "usage": {"input_tokens": 30, "output_tokens": 4, "total_tokens": 34}}
STREAM = [
    event("response.created", sequence_number=0, response=RESPONSE),
    event("response.output_text.delta", sequence_number=1, item_id="msg_1", delta="Hi"),
    event("response.completed", sequence_number=2, response=DONE),
]


def test_events_pass_with_the_model_renamed_and_the_end_held_back() -> None:
    codec = ResponsesCodec("gpt-4o-mini")
    frames = [f for e in STREAM for f in codec.frames(e)]
    assert codec.finished
    assert [f.split(b"\n")[0] for f in frames] == [
        b"event: response.created",
        b"event: response.output_text.delta",
    ]
    created = json.loads(frames[0].split(b"data: ", 1)[1])
    assert created["response"]["model"] == "openai/gpt-4o-mini-2024-07-18"
    # Events that carry no response object pass byte for byte.
    assert (
        frames[1]
        == b"event: response.output_text.delta\ndata: " + STREAM[1].data.encode() + b"\n\n"
    )
    (end,) = codec.closing()
    assert json.loads(end.split(b"data: ", 1)[1])["response"]["model"].startswith("openai/")
    assert codec.usage() == (30, 4)


def test_a_broken_stream_is_billed_its_pieces_and_ends_with_an_error_event() -> None:
    codec = ResponsesCodec("gpt-4o-mini")
    for e in STREAM[:2]:
        codec.frames(e)
    assert not codec.finished and codec.usage() == (0, 1)
    with pytest.raises(UpstreamFailure):
        codec.frames(event("error", sequence_number=9, code="server_error", message="boom"))
    frame = codec.error_frame(
        APIError(502, "The OpenAI stream failed", code="upstream_stream_failed")
    )
    assert frame.startswith(b"event: error\ndata: ")
    err = json.loads(frame.split(b"data: ", 1)[1])
    assert err == {
        "type": "error",
        "sequence_number": 2,
        "code": "upstream_stream_failed",
        "message": "The OpenAI stream failed",
        "param": None,
    }
