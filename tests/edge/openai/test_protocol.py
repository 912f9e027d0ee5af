"""The hosted request schemas: every field honoured, accepted at a no-op value, or refused with
a 400 naming it."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from services.edge.errors import from_validation
from services.edge.openai.protocol import ChatCompletionRequest, CompletionRequest

BASE: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def error_for(body: dict[str, Any], schema: type = ChatCompletionRequest) -> tuple[str, str]:
    with pytest.raises(ValidationError) as err:
        schema.model_validate(body)
    api = from_validation(err.value)
    assert api.status == 400
    return api.param or "", api.code or ""


@pytest.mark.parametrize(
    ("extra", "param", "code"),
    [
        ({"temperature": 2.5}, "temperature", "invalid_value"),
        ({"top_p": 0}, "top_p", "invalid_value"),
        ({"max_tokens": 0}, "max_tokens", "invalid_value"),
        ({"max_tokens": 2**31}, "max_tokens", "invalid_value"),
        ({"n": 0}, "n", "invalid_value"),
        ({"n": 129}, "n", "invalid_value"),
        ({"presence_penalty": 2.5}, "presence_penalty", "invalid_value"),
        ({"frequency_penalty": -3}, "frequency_penalty", "invalid_value"),
        ({"logit_bias": {"50": 101}}, "logit_bias.50", "invalid_value"),
        ({"logit_bias": {"x": 1}}, "logit_bias", "invalid_value"),
        ({"stop": [""]}, "stop", "invalid_value"),
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs", "invalid_value"),
        ({"top_logprobs": 2}, "top_logprobs", "unsupported_parameter"),
        ({"tool_choice": "required"}, "tool_choice", "unsupported_parameter"),
        ({"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "other"}}},
         "tool_choice", "unsupported_parameter"),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type",
         "invalid_value"),
        ({"tools": [{"type": "function", "function": {"name": "has space"}}]},
         "tools[0].function.name", "invalid_value"),
        ({"response_format": {"type": "xml"}}, "response_format.type", "invalid_value"),
        ({"response_format": {"type": "json_schema"}}, "response_format", "invalid_value"),
        ({"store": True}, "store", "unsupported_parameter"),
        ({"metadata": {"a": "b"}}, "metadata", "unsupported_parameter"),
        ({"reasoning_effort": "low"}, "reasoning_effort", "unsupported_parameter"),
        ({"modalities": ["text", "audio"]}, "modalities", "unsupported_parameter"),
        ({"web_search_options": {}}, "web_search_options", "unsupported_parameter"),
        ({"a_field_from_next_month": 1}, "a_field_from_next_month", "unknown_parameter"),
        ({"stream": True, "stream_options": {"nope": 1}}, "stream_options.nope",
         "unknown_parameter"),
    ],
)  # fmt: skip
def test_bad_parameters_name_the_parameter(extra: dict[str, Any], param: str, code: str) -> None:
    assert error_for({**BASE, **extra}) == (param, code)


@pytest.mark.parametrize(
    ("message", "param", "code"),
    [
        ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
         "messages[0].content[0].type", "unsupported_parameter"),
        ({"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]},
         "messages[0].content[0].type", "unsupported_parameter"),
        ({"role": "user", "content": "x", "mood": "happy"}, "messages[0].mood",
         "unknown_parameter"),
        ({"role": "tool", "content": "42"}, "messages[0]", "invalid_value"),
        ({"role": "user", "content": "x", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
         "messages[0].tool_calls", "unsupported_parameter"),
        ({"role": "wizard", "content": "x"}, "messages[0].role", "invalid_value"),
    ],
)  # fmt: skip
def test_bad_messages_name_the_part(message: dict[str, Any], param: str, code: str) -> None:
    assert error_for({"model": "m", "messages": [message]}) == (param, code)


def test_missing_field_is_reported_as_missing() -> None:
    assert error_for({"model": "m"}) == ("messages", "missing_required_parameter")


def test_everything_honoured_is_read() -> None:
    req = ChatCompletionRequest.model_validate(
        {
            **BASE,
            "tools": [TOOL],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "parallel_tool_calls": False,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "object"}, "strict": True},
            },
            "logprobs": True,
            "top_logprobs": 5,
            "n": 3,
            "presence_penalty": 0.5,
            "frequency_penalty": -0.5,
            "logit_bias": {"42": -100, "7": 100},
        }
    )
    assert req.named_function() == "get_weather"
    assert req.choices() == 3 and req.token_bias() == {42: -100.0, 7: 100.0}
    assert req.response_format and req.response_format.json_schema
    assert req.response_format.json_schema.schema_ == {"type": "object"}


def test_no_op_values_and_hints_are_accepted() -> None:
    req = ChatCompletionRequest.model_validate(
        {
            **BASE,
            "store": False,
            "metadata": {},
            "modalities": ["text"],
            "service_tier": "auto",
            "user": "u-1",
            "safety_identifier": "s-1",
            "prompt_cache_key": "k",
            "stream": True,
            "stream_options": {"include_usage": True, "include_obfuscation": False},
        }
    )
    assert req.include_usage()


def test_a_replayed_assistant_turn_with_tool_calls() -> None:
    req = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": "weather?"},
                {
                    "role": "assistant",
                    "content": None,
                    "refusal": None,
                    "annotations": [],
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"a": 1}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            ],
        }
    )
    assert req.messages[1].tool_calls and req.messages[1].tool_calls[0].function.name == "f"
    assert req.messages[2].text() == "sunny"


def test_content_parts_flatten_to_text() -> None:
    req = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                }
            ],
        }
    )
    assert req.messages[0].text() == "ab"


def test_max_completion_tokens_wins() -> None:
    req = ChatCompletionRequest.model_validate(
        {**BASE, "max_tokens": 5, "max_completion_tokens": 9}
    )
    assert req.token_limit() == 9


def test_completions() -> None:
    req = CompletionRequest.model_validate({"model": "m", "prompt": "x"})
    assert req.token_limit() == 16
    assert error_for({"model": "m", "prompt": ["a", "b"]}, CompletionRequest)[0] == "prompt"
    assert error_for({"model": "m", "prompt": "x", "logprobs": 6}, CompletionRequest)[0] == (
        "logprobs"
    )
    assert error_for({"model": "m", "prompt": "x", "best_of": 3}, CompletionRequest)[0] == (
        "best_of"
    )
    ok = CompletionRequest.model_validate({"model": "m", "prompt": "x", "n": 2, "best_of": 2})
    assert ok.choices() == 2
