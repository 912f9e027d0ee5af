"""Every request field or part that cannot be expressed for Anthropic models: a 400 naming it,
with code unsupported_parameter (no equivalent) or invalid_value (a bad value)."""

from __future__ import annotations

from typing import Any

import pytest

from services.edge.errors import APIError
from services.edge.providers.anthropic_chat import chat_to_messages
from tests.edge.providers.test_anthropic_chat_request import (
    DEFAULT_MAX,
    HI,
    MODEL,
    TOOL_LOOP,
    WEATHER,
)


def _user(*parts: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": list(parts)}]


def _image(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def _file(**file: Any) -> dict[str, Any]:
    return {"type": "file", "file": file}


def _call(arguments: str) -> list[dict[str, Any]]:
    return [
        *HI,
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": arguments},
                }
            ],
        },
    ]


UNSUPPORTED, INVALID = "unsupported_parameter", "invalid_value"
# (OpenAI body less `model`, the parameter the 400 names, its code)
REFUSALS: list[tuple[dict[str, Any], str, str]] = [
    ({"messages": HI, "temperature": 1.5}, "temperature", INVALID),
    ({"messages": HI, "temperature": -0.1}, "temperature", INVALID),
    ({"messages": HI, "top_p": 2}, "top_p", INVALID),
    ({"messages": HI, "top_k": 0}, "top_k", INVALID),
    ({"messages": HI, "max_tokens": 0}, "max_tokens", INVALID),
    ({"messages": HI, "max_completion_tokens": "9"}, "max_completion_tokens", INVALID),
    ({"messages": HI, "stop": [""]}, "stop", INVALID),
    ({"messages": HI, "n": 2}, "n", UNSUPPORTED),
    ({"messages": HI, "logprobs": True}, "logprobs", UNSUPPORTED),
    ({"messages": HI, "top_logprobs": 3}, "top_logprobs", UNSUPPORTED),
    ({"messages": HI, "seed": 7}, "seed", UNSUPPORTED),
    ({"messages": HI, "presence_penalty": 0.5}, "presence_penalty", UNSUPPORTED),
    ({"messages": HI, "frequency_penalty": -1}, "frequency_penalty", UNSUPPORTED),
    ({"messages": HI, "logit_bias": {"50256": -100}}, "logit_bias", UNSUPPORTED),
    ({"messages": HI, "audio": {"voice": "alloy", "format": "mp3"}}, "audio", UNSUPPORTED),
    ({"messages": HI, "modalities": ["text", "audio"]}, "modalities", UNSUPPORTED),
    (
        {"messages": HI, "prediction": {"type": "content", "content": "x"}},
        "prediction",
        UNSUPPORTED,
    ),
    ({"messages": HI, "store": True}, "store", UNSUPPORTED),
    ({"messages": HI, "metadata": {"team": "a"}}, "metadata", UNSUPPORTED),
    ({"messages": HI, "web_search_options": {}}, "web_search_options", UNSUPPORTED),
    ({"messages": HI, "verbosity": "low"}, "verbosity", UNSUPPORTED),
    ({"messages": HI, "moderation": {"model": "m"}}, "moderation", UNSUPPORTED),
    ({"messages": HI, "prompt_cache_retention": "24h"}, "prompt_cache_retention", UNSUPPORTED),
    ({"messages": HI, "functions": [{"name": "f"}]}, "functions", UNSUPPORTED),
    ({"messages": HI, "function_call": "auto"}, "function_call", UNSUPPORTED),
    ({"messages": HI, "service_tier": "flex"}, "service_tier", UNSUPPORTED),
    ({"messages": HI, "best_of": 2}, "best_of", UNSUPPORTED),
    ({"messages": HI, "stream_options": {"include_usage": True}}, "stream_options", INVALID),
    ({"messages": HI, "stream": True, "stream_options": {"x": 1}}, "stream_options.x", UNSUPPORTED),
    ({"messages": HI, "user": "a", "safety_identifier": "b"}, "safety_identifier", INVALID),
    ({"messages": []}, "messages", INVALID),
    ({"messages": [{"role": "system", "content": "only rules"}]}, "messages", INVALID),
    (
        {"messages": [{"role": "user", "content": "x", "extra": 1}]},
        "messages[0].extra",
        UNSUPPORTED,
    ),
    (
        {"messages": [{"role": "function", "name": "f", "content": "x"}]},
        "messages[0].role",
        UNSUPPORTED,
    ),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", INVALID),
    ({"messages": _call("{not json")}, "messages[1].tool_calls[0].function.arguments", INVALID),
    ({"messages": _call("[1, 2]")}, "messages[1].tool_calls[0].function.arguments", INVALID),
    (
        {"messages": [*_call("{}"), {"role": "tool", "content": "x"}]},
        "messages[2].tool_call_id",
        INVALID,
    ),
    (
        {"messages": [*HI, {"role": "assistant", "content": "x", "audio": {"id": "a1"}}]},
        "messages[1].audio",
        UNSUPPORTED,
    ),
    (
        {"messages": _user({"type": "text", "text": "x"}, _image("data:text/plain;base64,eA=="))},
        "messages[0].content[1].image_url.url",
        INVALID,
    ),
    (
        {"messages": _user(_image("data:image/png,rawbytes"))},
        "messages[0].content[0].image_url.url",
        INVALID,
    ),
    (
        {"messages": _user(_image("data:image/png;base64,%%%"))},
        "messages[0].content[0].image_url.url",
        INVALID,
    ),
    (
        {"messages": _user(_image("ftp://example.com/a.png"))},
        "messages[0].content[0].image_url.url",
        INVALID,
    ),
    (
        {
            "messages": _user(
                {"type": "input_audio", "input_audio": {"data": "eA==", "format": "wav"}}
            )
        },
        "messages[0].content[0]",
        UNSUPPORTED,
    ),
    (
        {"messages": _user(_file(file_id="file-abc"))},
        "messages[0].content[0].file.file_id",
        UNSUPPORTED,
    ),
    (
        {"messages": _user(_file(file_data="data:application/msword;base64,eA=="))},
        "messages[0].content[0].file.file_data",
        UNSUPPORTED,
    ),
    ({"messages": _user({"type": "video", "video": {}})}, "messages[0].content[0].type", INVALID),
    (
        {"messages": HI, "tools": [{"type": "custom", "custom": {"name": "x"}}]},
        "tools[0].type",
        UNSUPPORTED,
    ),
    (
        {"messages": HI, "tools": [{"type": "function", "function": {"name": "json_response"}}]},
        "tools[0].function.name",
        INVALID,
    ),
    (
        {
            "messages": HI,
            "tools": [WEATHER],
            "tool_choice": {"type": "function", "function": {"name": "other"}},
        },
        "tool_choice.function.name",
        INVALID,
    ),
    ({"messages": HI, "tool_choice": "required"}, "tool_choice", INVALID),
    (
        {
            "messages": HI,
            "tools": [WEATHER],
            "tool_choice": {"type": "allowed_tools", "allowed_tools": {}},
        },
        "tool_choice.type",
        UNSUPPORTED,
    ),
    ({"messages": HI, "response_format": {"type": "xml"}}, "response_format.type", INVALID),
    ({"messages": HI, "reasoning_effort": "extreme"}, "reasoning_effort", INVALID),
    ({"messages": HI, "reasoning_effort": "low", "max_tokens": 1000}, "max_tokens", INVALID),
    ({"messages": HI, "reasoning_effort": "low", "temperature": 0.2}, "temperature", INVALID),
    ({"messages": HI, "reasoning_effort": "low", "top_k": 5}, "top_k", UNSUPPORTED),
    ({"messages": HI, "reasoning_effort": "low", "top_p": 0.5}, "top_p", INVALID),
    (
        {"messages": HI, "reasoning_effort": "low", "tools": [WEATHER], "tool_choice": "required"},
        "tool_choice",
        UNSUPPORTED,
    ),
    (
        {"messages": HI, "reasoning_effort": "low", "response_format": {"type": "json_object"}},
        "response_format",
        UNSUPPORTED,
    ),
    (
        {"messages": TOOL_LOOP, "reasoning_effort": "low", "tools": [WEATHER]},
        "reasoning_effort",
        UNSUPPORTED,
    ),
]


@pytest.mark.parametrize(("body", "param", "code"), REFUSALS, ids=[r[1] for r in REFUSALS])
def test_refusals_name_the_field(body: dict[str, Any], param: str, code: str) -> None:
    with pytest.raises(APIError) as info:
        chat_to_messages({"model": "anthropic/x", **body}, MODEL, DEFAULT_MAX)
    assert (info.value.status, info.value.param, info.value.code) == (400, param, code)
    assert info.value.message
