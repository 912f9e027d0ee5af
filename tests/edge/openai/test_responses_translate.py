"""Responses API requests -> chat-completions bodies, one request/translation pair per case, and
the fields refused by name (`services.edge.openai.responses_translate`)."""

from __future__ import annotations

from typing import Any

import pytest

from services.edge.errors import APIError
from services.edge.openai.responses_translate import (
    check_request,
    input_items,
    responses_param,
    to_chat,
)

M = "anthropic/claude-3-5-haiku-latest"
PNG = "data:image/png;base64,iVBORw0KGgo="
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    "strict": True,
}
CHAT_WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        "strict": True,
    },
}
CALL = {
    "type": "function_call",
    "id": "fc_1",
    "call_id": "call_1",
    "name": "get_weather",
    "arguments": '{"city":"Paris"}',
    "status": "completed",
}
CHAT_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
}
RESULT = {"type": "function_call_output", "call_id": "call_1", "output": "Sunny"}
USER = {"role": "user", "content": "Weather in Paris?"}

# (Responses request body, the chat-completions body it runs as)
CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (
        "a string input",
        {"model": M, "input": "Hi"},
        {"model": M, "messages": [{"role": "user", "content": "Hi"}]},
    ),
    (
        "instructions, sampling and the cap",
        {
            "model": M,
            "instructions": "Be brief.",
            "input": "Hi",
            "max_output_tokens": 64,
            "temperature": 0.2,
            "top_p": 0.9,
            "user": "u-1",
        },
        {
            "model": M,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
            ],
            "max_completion_tokens": 64,
            "temperature": 0.2,
            "top_p": 0.9,
            "user": "u-1",
        },
    ),
    (
        "message items with text and image parts",
        {
            "model": M,
            "input": [
                {"type": "message", "role": "developer", "content": "Answer in French."},
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "What is this?"},
                        {"type": "input_image", "image_url": PNG, "detail": "low"},
                        {"type": "input_file", "file_data": "JVBERi0=", "filename": "a.pdf"},
                    ],
                },
            ],
        },
        {
            "model": M,
            "messages": [
                {"role": "developer", "content": "Answer in French."},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": PNG, "detail": "low"}},
                        {"type": "file", "file": {"file_data": "JVBERi0=", "filename": "a.pdf"}},
                    ],
                },
            ],
        },
    ),
    (
        "a tool loop sent whole: output items come back as input",
        {
            "model": M,
            "input": [
                USER,
                {
                    "type": "message",
                    "id": "msg_1",
                    "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": "Let me look.", "annotations": []}],
                },
                CALL,
                {**CALL, "id": "fc_2", "call_id": "call_2"},
                RESULT,
                {"type": "function_call_output", "call_id": "call_2", "output": "Rain"},
            ],
            "tools": [WEATHER],
            "tool_choice": "auto",
            "parallel_tool_calls": True,
        },
        {
            "model": M,
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {
                    "role": "assistant",
                    "content": [{"type": "text", "text": "Let me look."}],
                    "tool_calls": [CHAT_CALL, {**CHAT_CALL, "id": "call_2"}],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
                {"role": "tool", "tool_call_id": "call_2", "content": "Rain"},
            ],
            "tools": [CHAT_WEATHER],
            "tool_choice": "auto",
            "parallel_tool_calls": True,
        },
    ),
    (
        "a function call with no message before it; text parts as a tool's output",
        {
            "model": M,
            "input": [
                USER,
                CALL,
                {**RESULT, "output": [{"type": "input_text", "text": "Sunny"}]},
            ],
        },
        {
            "model": M,
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": None, "tool_calls": [CHAT_CALL]},
                {
                    "role": "tool",
                    "tool_call_id": "call_1",
                    "content": [{"type": "text", "text": "Sunny"}],
                },
            ],
        },
    ),
    (
        "a named tool choice; json_schema; reasoning effort; stream",
        {
            "model": M,
            "input": "Hi",
            "tools": [{**WEATHER, "strict": None, "description": None}],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "text": {
                "format": {
                    "type": "json_schema",
                    "name": "answer",
                    "schema": {"type": "object"},
                    "strict": True,
                },
                "verbosity": "medium",
            },
            "reasoning": {"effort": "low"},
            "stream": True,
            "stream_options": {"include_obfuscation": False},
        },
        {
            "model": M,
            "messages": [{"role": "user", "content": "Hi"}],
            "stream": True,
            "stream_options": {"include_usage": True},
            "tools": [
                {
                    "type": "function",
                    "function": {"name": "get_weather", "parameters": WEATHER["parameters"]},
                }
            ],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True},
            },
            "reasoning_effort": "low",
        },
    ),
    (
        "json_object; what changes nothing is accepted and not sent (tool settings without tools)",
        {
            "model": M,
            "input": "Hi",
            "text": {"format": {"type": "json_object"}},
            "store": False,
            "metadata": {"team": "search"},
            "include": [],
            "truncation": "disabled",
            "service_tier": "auto",
            "prompt_cache_key": "k",
            "max_tool_calls": 3,
            "background": False,
            "top_logprobs": 0,
            "reasoning": {"effort": None, "summary": None},
            "safety_identifier": "end-user-9",
            "tool_choice": "auto",
            "parallel_tool_calls": False,
            "tools": [],
        },
        {
            "model": M,
            "messages": [{"role": "user", "content": "Hi"}],
            "user": "end-user-9",
            "response_format": {"type": "json_object"},
        },
    ),
]


@pytest.mark.parametrize(("body", "chat"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_translation(body: dict[str, Any], chat: dict[str, Any]) -> None:
    assert to_chat(body, []).chat == chat


def test_the_stored_conversation_comes_first_and_instructions_are_not_carried() -> None:
    history = [
        {"type": "message", "role": "user", "content": "Weather in Paris?"},
        {**CALL},
    ]
    plan = to_chat({"model": M, "instructions": "Be brief.", "input": [RESULT]}, history)
    assert plan.chat["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [CHAT_CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
    ]
    assert plan.input_items == [RESULT]


def test_input_items_name_a_bare_message_and_a_string() -> None:
    assert input_items("Hi") == [{"type": "message", "role": "user", "content": "Hi"}]
    assert input_items([USER, RESULT]) == [{"type": "message", **USER}, RESULT]


# (request fields added to a minimal body, the parameter the 400 names)
REFUSED: list[tuple[dict[str, Any], str]] = [
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools[0].type"),
    ({"tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]}, "tools[0].type"),
    ({"tools": [{"type": "computer_use_preview"}]}, "tools[0].type"),
    ({"tools": [{**WEATHER, "defer_loading": True}]}, "tools[0].defer_loading"),
    ({"tools": [{"type": "function"}]}, "tools[0].name"),
    ({"tools": [WEATHER], "tool_choice": {"type": "web_search_preview"}}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "allowed_tools", "mode": "auto"}},
     "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"background": True}, "background"),
    ({"conversation": "conv_1"}, "conversation"),
    ({"prompt": {"id": "pmpt_1"}}, "prompt"),
    ({"include": ["message.output_text.logprobs"]}, "include"),
    ({"include": ["reasoning.encrypted_content"]}, "include"),
    ({"truncation": "auto"}, "truncation"),
    ({"top_logprobs": 5}, "top_logprobs"),
    ({"service_tier": "flex"}, "service_tier"),
    ({"text": {"verbosity": "low"}}, "text.verbosity"),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format"),
    ({"text": {"format": {"type": "grammar"}}}, "text.format.type"),
    ({"reasoning": {"effort": "low", "summary": "auto"}}, "reasoning.summary"),
    ({"stream_options": {"include_usage": True}, "stream": True}, "stream_options.include_usage"),
    ({"stream_options": {}}, "stream_options"),
    ({"store": "yes"}, "store"),
    ({"metadata": {"k": 1}}, "metadata.k"),
    ({"a_field_from_next_month": 1}, "a_field_from_next_month"),
    ({"input": [{"type": "reasoning", "summary": []}]}, "input[0]"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
     "input[0].content[0]"),
    ({"input": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "input[0].content[0]"),
    ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
    ({"input": [{"type": "function_call", "name": "f"}]}, "input[0].call_id"),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": 3}]},
     "input[0].output"),
    ({"input": 3}, "input"),
    ({"input": []}, "input"),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "param"), REFUSED, ids=[r[1] for r in REFUSED])
def test_refused_naming_the_field(extra: dict[str, Any], param: str) -> None:
    body = {"model": M, "input": "Hi", **extra}
    with pytest.raises(APIError) as err:
        to_chat(body, [])
    assert err.value.status == 400
    assert err.value.param == param


def test_input_is_required() -> None:
    with pytest.raises(APIError) as err:
        check_request({"model": M})
    assert (err.value.param, err.value.code) == ("input", "missing_required_parameter")


@pytest.mark.parametrize(
    ("chat", "responses"),
    [
        ("messages[2].content[0]", "input"),
        ("messages.0.content", "input"),
        ("max_completion_tokens", "max_output_tokens"),
        ("max_tokens", "max_output_tokens"),
        ("response_format", "text.format"),
        ("response_format.json_schema.schema", "text.format"),
        ("reasoning_effort", "reasoning.effort"),
        ("tools[1].function.name", "tools[1].name"),
        ("tools.0.function.parameters", "tools[0].parameters"),
        ("tool_choice.function.name", "tool_choice.name"),
        ("temperature", "temperature"),
        (None, None),
    ],
)
def test_chat_parameters_in_responses_terms(chat: str | None, responses: str | None) -> None:
    assert responses_param(chat) == responses
