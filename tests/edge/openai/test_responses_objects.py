"""Chat answers -> Responses objects, non-streamed (`responses_objects`) and streamed
(`responses_events`): one answer/response pair per case, the documented event order with
increasing sequence numbers, and the same output both ways."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from services.edge.openai.responses_events import ResponseStream
from services.edge.openai.responses_objects import completion_to_response, response_object

BODY: dict[str, Any] = {"model": "anthropic/claude-3-5-haiku-latest", "input": "Hi"}
USAGE = {"prompt_tokens": 12, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 2}}
RESPONSE_USAGE = {
    "input_tokens": 12,
    "input_tokens_details": {"cached_tokens": 2, "cache_write_tokens": 0},
    "output_tokens": 5,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 17,
}
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
}
EVENTS = TypeAdapter(ResponseStreamEvent)


def ids() -> Callable[[str], str]:
    counter = itertools.count(1)
    return lambda prefix: f"{prefix}_{next(counter)}"


def completion(content: str | None, finish: str, calls: list[Any] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if calls:
        message["tool_calls"] = calls
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": BODY["model"],
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": USAGE,
    }


def text(value: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": value}


def message(item_id: str, status: str, value: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "content": [text(value)],
        "role": "assistant",
    }


def call(item_id: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "arguments": '{"city":"Paris"}',
        "call_id": "call_1",
        "name": "get_weather",
    }


# (chat.completion, status, incomplete reason, output items)
ANSWERS = [
    ("text", completion("Hello!", "stop"), "completed", None,
     [message("msg_1", "completed", "Hello!")]),
    ("cut short", completion("Hel", "length"), "incomplete", "max_output_tokens",
     [message("msg_1", "incomplete", "Hel")]),
    ("a tool call", completion(None, "tool_calls", [CALL]), "completed", None,
     [call("fc_1", "completed")]),
    ("text then a tool call", completion("Let me look.", "tool_calls", [CALL]), "completed", None,
     [message("msg_1", "completed", "Let me look."), call("fc_2", "completed")]),
    ("nothing", completion("", "stop"), "completed", None, [message("msg_1", "completed", "")]),
    ("filtered", completion("", "content_filter"), "incomplete", "content_filter",
     [message("msg_1", "incomplete", "")]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("answer", "status", "reason", "output"), [a[1:] for a in ANSWERS], ids=[a[0] for a in ANSWERS]
)
def test_completion_to_response(
    answer: dict[str, Any], status: str, reason: str | None, output: list[Any]
) -> None:
    got = completion_to_response(
        answer, BODY, response_id="resp_sluice_x", created_at=7, new_id=ids()
    )
    assert got["output"] == output
    assert (got["status"], got["usage"]) == (status, RESPONSE_USAGE)
    assert got["incomplete_details"] == ({"reason": reason} if reason else None)
    parsed = Response.model_validate(got)
    assert parsed.output_text == "".join(i["content"][0]["text"] for i in output if "content" in i)


def test_the_request_is_echoed_with_openais_defaults() -> None:
    body = {
        **BODY,
        "instructions": "Be brief.",
        "tools": [{"type": "function", "name": "f", "parameters": {}}],
        "temperature": 0,
        "store": False,
        "metadata": {"a": "b"},
        "previous_response_id": "resp_sluice_prev",
    }
    got = response_object(
        body, response_id="resp_sluice_1", created_at=9, model="m", status="completed",
        output=[], usage=None,
    )  # fmt: skip
    assert {k: got[k] for k in ("id", "object", "created_at", "model", "status")} == {
        "id": "resp_sluice_1",
        "object": "response",
        "created_at": 9,
        "model": "m",
        "status": "completed",
    }
    assert got["instructions"] == "Be brief." and got["tools"] == body["tools"]
    assert (got["temperature"], got["top_p"], got["store"]) == (0, 1.0, False)
    assert (got["tool_choice"], got["parallel_tool_calls"]) == ("auto", True)
    assert got["text"] == {"format": {"type": "text"}, "verbosity": "medium"}
    assert got["previous_response_id"] == "resp_sluice_prev" and got["metadata"] == {"a": "b"}
    Response.model_validate(got)


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {"object": "chat.completion.chunk", "choices": choices, "usage": None}


def run(chunks: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    skeleton = response_object(
        BODY, response_id="resp_sluice_s", created_at=3, model=BODY["model"],
        status="in_progress", output=[], usage=None,
    )  # fmt: skip
    stream = ResponseStream(skeleton, new_id=ids())
    events = stream.start()
    for c in chunks:
        events += stream.feed(c)
    end, response = stream.finish()
    return events + end, response


USAGE_CHUNK = {"object": "chat.completion.chunk", "choices": [], "usage": USAGE}
TEXT_STREAM = [
    chunk({"role": "assistant"}),
    chunk({"content": "Hel"}),
    chunk({"content": "lo!"}),
    chunk({}, "stop"),
    USAGE_CHUNK,
]
CALL_STREAM = [
    chunk({"role": "assistant"}),
    chunk({"content": "Let me look."}),
    chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                           "function": {"name": "get_weather", "arguments": ""}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
    chunk({}, "tool_calls"),
    USAGE_CHUNK,
]  # fmt: skip


def test_a_text_stream_in_the_documented_order() -> None:
    events, response = run(TEXT_STREAM)
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert (
        events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    )
    assert events[6]["text"] == "Hello!"
    assert response["output"] == [message("msg_1", "completed", "Hello!")]
    assert response["usage"] == RESPONSE_USAGE
    assert events[-1]["response"] == response
    for event in events:
        EVENTS.validate_python(event)


def test_a_tool_call_stream_and_the_same_output_as_whole() -> None:
    events, response = run(CALL_STREAM)
    kinds = [e["type"] for e in events]
    assert kinds[2:] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[8]["item"] == {**call("fc_2", "in_progress"), "arguments": ""}
    assert events[11]["arguments"] == '{"city":"Paris"}'
    whole = completion_to_response(
        completion("Let me look.", "tool_calls", [CALL]), BODY, response_id="r", created_at=3,
        new_id=ids(),
    )  # fmt: skip
    assert response["output"] == whole["output"]


def test_a_stream_cut_short_is_incomplete_and_an_empty_one_has_a_message() -> None:
    events, response = run([chunk({"content": "Hel"}), chunk({}, "length"), USAGE_CHUNK])
    assert events[-1]["type"] == "response.incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response["output"] == [message("msg_1", "incomplete", "Hel")]
    events, response = run([chunk({"role": "assistant"}), chunk({}, "stop"), USAGE_CHUNK])
    assert response["output"] == [message("msg_1", "completed", "")]
    assert [e["type"] for e in events][-2:] == ["response.output_item.done", "response.completed"]


def test_a_failed_stream_ends_with_response_failed() -> None:
    skeleton = response_object(
        BODY, response_id="r", created_at=3, model="m", status="in_progress", output=[],
        usage=None,
    )  # fmt: skip
    stream = ResponseStream(skeleton, new_id=ids())
    events = stream.start() + stream.feed(chunk({"content": "Hel"}))
    (failed,) = stream.fail({"message": "The Anthropic stream failed", "type": "upstream_error"})
    assert failed["type"] == "response.failed"
    assert failed["sequence_number"] == events[-1]["sequence_number"] + 1
    assert failed["response"]["status"] == "failed"
    assert failed["response"]["error"] == {
        "code": "server_error",
        "message": "The Anthropic stream failed",
    }
    assert failed["response"]["output"] == [message("msg_1", "incomplete", "Hel")]
    EVENTS.validate_python(failed)
