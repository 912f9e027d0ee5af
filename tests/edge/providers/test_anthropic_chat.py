"""Anthropic Messages answers -> OpenAI chat completions: one Message per case for plain
answers, one list of stream events per case for streams, with the exact objects expected."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from services.edge.providers.anthropic_chat import (
    AnthropicStreamError,
    StreamTranslator,
    message_to_completion,
)

MODEL = "anthropic/claude-sonnet-4-5"
ID = "chatcmpl-abc"
CREATED = 1_700_000_000


def message(*content: dict[str, Any], stop: str = "end_turn", **usage: int) -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": list(content),
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 5, **usage},
    }


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def tool_use(id: str, name: str, input: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": id, "name": name, "input": input}


def completion(reply: dict[str, Any], finish: str, usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": ID,
        "object": "chat.completion",
        "created": CREATED,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "refusal": None, "annotations": [], **reply},
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
        "usage": usage,
    }


def usage(prompt: int, completion_tokens: int, cached: int = 0, **extra: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached},
        **extra,
    }


def call(id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}


# (case id, Anthropic Message, expected chat.completion)
ANSWERS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (
        "text",
        message(text("Hello"), text(" there.")),
        completion({"content": "Hello there."}, "stop", usage(10, 5)),
    ),
    (
        "text then parallel tool calls",
        message(
            text("Checking."),
            tool_use("toolu_1", "get_weather", {"city": "Paris"}),
            tool_use("toolu_2", "get_weather", {"city": "Rome"}),
            stop="tool_use",
        ),
        completion(
            {
                "content": "Checking.",
                "tool_calls": [
                    call("toolu_1", "get_weather", '{"city": "Paris"}'),
                    call("toolu_2", "get_weather", '{"city": "Rome"}'),
                ],
            },
            "tool_calls",
            usage(10, 5),
        ),
    ),
    (
        "a tool call alone: content null",
        message(tool_use("toolu_1", "now", {}), stop="tool_use"),
        completion(
            {"content": None, "tool_calls": [call("toolu_1", "now", "{}")]},
            "tool_calls",
            usage(10, 5),
        ),
    ),
    (
        "thinking is not shown",
        message(
            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
            {"type": "redacted_thinking", "data": "xyz"},
            text("42"),
        ),
        completion({"content": "42"}, "stop", usage(10, 5)),
    ),
    (
        "the forced JSON tool is the answer",
        message(tool_use("toolu_1", "json_response", {"answer": "yes"}), stop="tool_use"),
        completion({"content": '{"answer": "yes"}'}, "stop", usage(10, 5)),
    ),
    (
        "usage with cache tokens",
        message(text("ok"), cache_read_input_tokens=100, cache_creation_input_tokens=20),
        completion(
            {"content": "ok"},
            "stop",
            usage(130, 5, cached=100, cache_read_input_tokens=100, cache_creation_input_tokens=20),
        ),
    ),
    (
        "an empty answer",
        message(stop="max_tokens"),
        completion({"content": ""}, "length", usage(10, 5)),
    ),
]


@pytest.mark.parametrize(
    ("anthropic", "expected"), [a[1:] for a in ANSWERS], ids=[a[0] for a in ANSWERS]
)
def test_message_to_completion(anthropic: dict[str, Any], expected: dict[str, Any]) -> None:
    assert (
        message_to_completion(anthropic, model=MODEL, completion_id=ID, created=CREATED) == expected
    )


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
    ],
)
def test_stop_reasons(stop_reason: str, finish_reason: str) -> None:
    done = message_to_completion(
        message(text("x"), stop=stop_reason), model=MODEL, completion_id=ID, created=CREATED
    )
    assert done["choices"][0]["finish_reason"] == finish_reason


# Streams ------------------------------------------------------------------------------------


def start(**usage: int) -> dict[str, Any]:
    msg = message()
    msg.update(stop_reason=None, usage={"input_tokens": 10, "output_tokens": 1, **usage})
    return {"type": "message_start", "message": msg}


def block(index: int, content_block: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_start", "index": index, "content_block": content_block}


def delta(index: int, **d: Any) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": d}


def text_delta(index: int, value: str) -> dict[str, Any]:
    return delta(index, type="text_delta", text=value)


def json_delta(index: int, value: str) -> dict[str, Any]:
    return delta(index, type="input_json_delta", partial_json=value)


def stop(index: int) -> dict[str, Any]:
    return {"type": "content_block_stop", "index": index}


def end(reason: str, output: int, **usage: int) -> list[dict[str, Any]]:
    return [
        {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": None},
            "usage": {"output_tokens": output, **usage},
        },
        {"type": "message_stop"},
    ]


PING = {"type": "ping"}


def chunk(d: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": ID,
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "choices": [{"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}],
    }


ROLE = chunk({"role": "assistant"})


def first(index: int, id: str, name: str) -> dict[str, Any]:
    return chunk(
        {
            "tool_calls": [
                {
                    "index": index,
                    "id": id,
                    "type": "function",
                    "function": {"name": name, "arguments": ""},
                }
            ]
        }
    )


def args(index: int, fragment: str) -> dict[str, Any]:
    return chunk({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})


# (case id, Anthropic events, expected chunks) — without include_usage.
STREAMS: list[tuple[str, list[dict[str, Any]], list[dict[str, Any]]]] = [
    (
        "text",
        [
            start(),
            block(0, text("")),
            PING,
            text_delta(0, "Hel"),
            text_delta(0, "lo"),
            stop(0),
            *end("end_turn", 2),
        ],
        [ROLE, chunk({"content": "Hel"}), chunk({"content": "lo"}), chunk({}, "stop")],
    ),
    (
        "text, then two parallel tool calls",
        [
            start(),
            block(0, text("")),
            text_delta(0, "Let me check."),
            stop(0),
            block(1, tool_use("toolu_a", "get_weather", {})),
            json_delta(1, '{"ci'),
            json_delta(1, 'ty": "Paris"}'),
            stop(1),
            PING,
            block(2, tool_use("toolu_b", "get_weather", {})),
            json_delta(2, ""),
            json_delta(2, '{"city": "Rome"}'),
            stop(2),
            *end("tool_use", 30),
        ],
        [
            ROLE,
            chunk({"content": "Let me check."}),
            first(0, "toolu_a", "get_weather"),
            args(0, '{"ci'),
            args(0, 'ty": "Paris"}'),
            first(1, "toolu_b", "get_weather"),
            args(1, '{"city": "Rome"}'),
            chunk({}, "tool_calls"),
        ],
    ),
    (
        "thinking first, not shown",
        [
            start(),
            block(0, {"type": "thinking", "thinking": ""}),
            delta(0, type="thinking_delta", thinking="Let me think"),
            delta(0, type="signature_delta", signature="sig"),
            stop(0),
            block(1, text("")),
            text_delta(1, "42"),
            stop(1),
            *end("end_turn", 9),
        ],
        [ROLE, chunk({"content": "42"}), chunk({}, "stop")],
    ),
    (
        "the forced JSON tool streams as content",
        [
            start(),
            block(0, tool_use("toolu_j", "json_response", {})),
            json_delta(0, '{"answer": '),
            json_delta(0, '"yes"}'),
            stop(0),
            *end("tool_use", 6),
        ],
        [ROLE, chunk({"content": '{"answer": '}), chunk({"content": '"yes"}'}), chunk({}, "stop")],
    ),
    (
        "unknown events and deltas are ignored",
        [
            start(),
            {"type": "future_event", "x": 1},
            block(0, text("")),
            delta(0, type="citations_delta", citation={}),
            text_delta(0, "ok"),
            stop(0),
            *end("max_tokens", 1),
        ],
        [ROLE, chunk({"content": "ok"}), chunk({}, "length")],
    ),
]


def feed_all(translator: StreamTranslator, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for event in events for c in translator.feed(event)]


@pytest.mark.parametrize(
    ("events", "expected"), [s[1:] for s in STREAMS], ids=[s[0] for s in STREAMS]
)
def test_stream_translation(events: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    translator = StreamTranslator(
        model=MODEL, completion_id=ID, created=CREATED, include_usage=False
    )
    assert feed_all(translator, events) == expected
    assert translator.finished


def test_streamed_tool_arguments_join_into_json() -> None:
    translator = StreamTranslator(
        model=MODEL, completion_id=ID, created=CREATED, include_usage=False
    )
    chunks = feed_all(translator, STREAMS[1][1])
    joined: dict[int, str] = {}
    for c in chunks:
        for tc in c["choices"][0]["delta"].get("tool_calls", []):
            joined[tc["index"]] = joined.get(tc["index"], "") + tc["function"]["arguments"]
    assert {i: json.loads(a) for i, a in joined.items()} == {
        0: {"city": "Paris"},
        1: {"city": "Rome"},
    }


def test_usage_chunk_and_cache_tokens() -> None:
    translator = StreamTranslator(
        model=MODEL, completion_id=ID, created=CREATED, include_usage=True
    )
    events = [
        start(cache_read_input_tokens=50, cache_creation_input_tokens=7),
        block(0, text("")),
        text_delta(0, "Hi"),
        stop(0),
    ]
    streamed = feed_all(translator, events)
    # Before the end: message_start's output count is a placeholder.
    assert translator.usage()["completion_tokens"] == 1
    assert not translator.finished
    streamed += feed_all(translator, end("end_turn", 12))
    final = usage(67, 12, cached=50, cache_read_input_tokens=50, cache_creation_input_tokens=7)
    assert streamed == [
        {**ROLE, "usage": None},
        {**chunk({"content": "Hi"}), "usage": None},
        {**chunk({}, "stop"), "usage": None},
        {
            "id": ID,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": MODEL,
            "choices": [],
            "usage": final,
        },
    ]
    assert translator.finished
    assert translator.usage() == final


def test_message_delta_input_counts_replace_the_start() -> None:
    translator = StreamTranslator(
        model=MODEL, completion_id=ID, created=CREATED, include_usage=False
    )
    feed_all(translator, [start(), *end("end_turn", 4, input_tokens=15)])
    assert translator.usage() == usage(15, 4)


def test_error_event_raises_with_type_and_message() -> None:
    translator = StreamTranslator(
        model=MODEL, completion_id=ID, created=CREATED, include_usage=False
    )
    feed_all(translator, [start(), block(0, text("")), text_delta(0, "par")])
    with pytest.raises(AnthropicStreamError) as info:
        translator.feed(
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        )
    assert (info.value.error_type, info.value.message, info.value.status) == (
        "overloaded_error",
        "Overloaded",
        529,
    )
    assert not translator.finished
    assert translator.usage()["prompt_tokens"] == 10


# The official SDK's own types and stream accumulator read what the translation produces.


def test_the_openai_sdk_parses_a_translated_completion() -> None:
    parsed = ChatCompletion.model_validate(
        message_to_completion(ANSWERS[1][1], model=MODEL, completion_id=ID, created=CREATED)
    )
    calls = parsed.choices[0].message.tool_calls or []
    assert [json.loads(c.function.arguments) for c in calls] == [
        {"city": "Paris"},
        {"city": "Rome"},
    ]


def test_the_openai_sdk_accumulates_a_translated_stream() -> None:
    translator = StreamTranslator(
        model=MODEL, completion_id=ID, created=CREATED, include_usage=True
    )
    events = [start(cache_read_input_tokens=3), *STREAMS[1][1]]
    state: ChatCompletionStreamState[None] = ChatCompletionStreamState()
    for c in feed_all(translator, events):
        list(state.handle_chunk(ChatCompletionChunk.model_validate(c)))
    final = state.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check."
    assert [
        (c.id, c.function.name, c.function.parsed_arguments)
        for c in choice.message.tool_calls or []
    ] == [("toolu_a", "get_weather", None), ("toolu_b", "get_weather", None)]
    assert [json.loads(c.function.arguments) for c in choice.message.tool_calls or []] == [
        {"city": "Paris"},
        {"city": "Rome"},
    ]
    assert final.usage is not None and final.usage.prompt_tokens == 13
