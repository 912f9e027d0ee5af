"""OpenAI chat request bodies -> Anthropic Messages bodies: one case per translation, compared
field by field, and every refusal with its status and the parameter it names."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from services.edge.providers.anthropic_chat import chat_to_messages

MODEL = "claude-sonnet-4-5"
DEFAULT_MAX = 1024
HI = [{"role": "user", "content": "Hi"}]
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n0000").decode()
PDF = base64.b64encode(b"%PDF-1.7\n0000").decode()
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather of a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
    "additionalProperties": False,
}
CALLS = [
    {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    },
    {
        "id": "call_2",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
    },
]
TOOL_LOOP = [
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {"role": "assistant", "content": "Checking both.", "tool_calls": CALLS},
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "rain"}]},
]


def base(**anthropic: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "max_tokens": DEFAULT_MAX,
        "messages": [{"role": "user", "content": "Hi"}],
        **anthropic,
    }


# (case id, OpenAI body less `model`, the expected Anthropic body)
REQUESTS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("plain text", {"messages": HI}, base()),
    (
        "system, developer and merged turns",
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
                {"role": "user", "content": "Hi"},
                {"role": "user", "content": [{"type": "text", "text": "there"}]},
                {"role": "assistant", "content": "Bonjour"},
                {"role": "assistant", "content": [{"type": "text", "text": "!"}]},
                {"role": "user", "content": "Again", "name": "ann"},
            ]
        },
        base(
            system="Be brief.\n\nUse French.",
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}],
                },
                {
                    "role": "assistant",
                    "content": [{"type": "text", "text": "Bonjour"}, {"type": "text", "text": "!"}],
                },
                {"role": "user", "content": "Again"},
            ],
        ),
    ),
    (
        "system blocks keep cache_control",
        {
            "messages": [
                {
                    "role": "system",
                    "content": [
                        {
                            "type": "text",
                            "text": "Long rules.",
                            "cache_control": {"type": "ephemeral"},
                        }
                    ],
                },
                *HI,
            ]
        },
        base(
            system=[{"type": "text", "text": "Long rules.", "cache_control": {"type": "ephemeral"}}]
        ),
    ),
    (
        "sampling, stop, caps, user and stream",
        {
            "messages": HI,
            "max_completion_tokens": 300,
            "temperature": 0.3,
            "top_p": 0.9,
            "top_k": 40,
            "stop": "END",
            "user": "user-42",
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        base(
            max_tokens=300,
            temperature=0.3,
            top_p=0.9,
            top_k=40,
            stop_sequences=["END"],
            metadata={"user_id": "user-42"},
            stream=True,
        ),
    ),
    (
        "both caps: the smaller; stop list; safety_identifier",
        {
            "messages": HI,
            "max_tokens": 50,
            "max_completion_tokens": 80,
            "stop": ["a", "b"],
            "safety_identifier": "hash-1",
            "service_tier": "default",
            "stream": False,
        },
        base(
            max_tokens=50,
            stop_sequences=["a", "b"],
            metadata={"user_id": "hash-1"},
            service_tier="standard_only",
            stream=False,
        ),
    ),
    (
        "neutral values change nothing",
        {
            "messages": [{"role": "user", "content": "Hi", "name": "ann"}],
            "n": 1,
            "logprobs": False,
            "top_logprobs": 0,
            "presence_penalty": 0,
            "frequency_penalty": 0.0,
            "logit_bias": {},
            "seed": None,
            "modalities": ["text"],
            "store": False,
            "metadata": {},
            "parallel_tool_calls": True,
            "service_tier": "auto",
            "prompt_cache_key": "k",
            "reasoning_effort": "none",
            "response_format": {"type": "text"},
            "verbosity": "medium",
            "audio": None,
            "temperature": None,
        },
        base(),
    ),
    (
        "function tools with auto choice and strict",
        {
            "messages": HI,
            "tools": [WEATHER, {"type": "function", "function": {"name": "now", "strict": True}}],
            "tool_choice": "auto",
        },
        base(
            tools=[
                WEATHER_TOOL,
                {
                    "name": "now",
                    "strict": True,
                    "input_schema": {"type": "object", "properties": {}},
                },
            ],
            tool_choice={"type": "auto"},
        ),
    ),
    ("tools without a choice", {"messages": HI, "tools": [WEATHER]}, base(tools=[WEATHER_TOOL])),
    (
        "required -> any, without parallel calls",
        {
            "messages": HI,
            "tools": [WEATHER],
            "tool_choice": "required",
            "parallel_tool_calls": False,
        },
        base(tools=[WEATHER_TOOL], tool_choice={"type": "any", "disable_parallel_tool_use": True}),
    ),
    (
        "a named function -> tool",
        {
            "messages": HI,
            "tools": [WEATHER],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        },
        base(tools=[WEATHER_TOOL], tool_choice={"type": "tool", "name": "get_weather"}),
    ),
    (
        "none",
        {"messages": HI, "tools": [WEATHER], "tool_choice": "none"},
        base(tools=[WEATHER_TOOL], tool_choice={"type": "none"}),
    ),
    (
        "parallel_tool_calls false alone",
        {"messages": HI, "tools": [WEATHER], "parallel_tool_calls": False},
        base(tools=[WEATHER_TOOL], tool_choice={"type": "auto", "disable_parallel_tool_use": True}),
    ),
    (
        "a tool-result round trip",
        {
            "messages": [*TOOL_LOOP, {"role": "user", "content": "And tomorrow?"}],
            "tools": [WEATHER],
        },
        base(
            tools=[WEATHER_TOOL],
            messages=[
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": "Checking both."},
                        {
                            "type": "tool_use",
                            "id": "call_1",
                            "name": "get_weather",
                            "input": {"city": "Paris"},
                        },
                        {
                            "type": "tool_use",
                            "id": "call_2",
                            "name": "get_weather",
                            "input": {"city": "Rome"},
                        },
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
                        {
                            "type": "tool_result",
                            "tool_use_id": "call_2",
                            "content": [{"type": "text", "text": "rain"}],
                        },
                        {"type": "text", "text": "And tomorrow?"},
                    ],
                },
            ],
        ),
    ),
    (
        "a replayed SDK message: nulls, empty content, no arguments",
        {
            "messages": [
                *HI,
                {
                    "role": "assistant",
                    "content": "",
                    "refusal": None,
                    "audio": None,
                    "function_call": None,
                    "annotations": [],
                    "tool_calls": [
                        {
                            "id": "call_9",
                            "type": "function",
                            "function": {"name": "now", "arguments": ""},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_9", "content": "noon"},
            ]
        },
        base(
            messages=[
                {"role": "user", "content": "Hi"},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "call_9", "name": "now", "input": {}}],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "call_9", "content": "noon"}
                    ],
                },
            ]
        ),
    ),
    (
        "an empty assistant message is left out; a refusal is its text",
        {
            "messages": [
                *HI,
                {"role": "assistant", "content": None},
                {"role": "user", "content": "Hello?"},
                {"role": "assistant", "content": None, "refusal": "I can't."},
                {"role": "user", "content": "Why?"},
            ]
        },
        base(
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "Hello?"}],
                },
                {"role": "assistant", "content": "I can't."},
                {"role": "user", "content": "Why?"},
            ]
        ),
    ),
    (
        "images: data URL -> base64, https -> url",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Compare."},
                        {
                            "type": "image_url",
                            "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "high"},
                        },
                        {
                            "type": "image_url",
                            "image_url": {"url": "https://example.com/a.jpg"},
                            "cache_control": {"type": "ephemeral"},
                        },
                    ],
                }
            ]
        },
        base(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Compare."},
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                        },
                        {
                            "type": "image",
                            "source": {"type": "url", "url": "https://example.com/a.jpg"},
                            "cache_control": {"type": "ephemeral"},
                        },
                    ],
                }
            ]
        ),
    ),
    (
        "PDF files -> document blocks",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "file",
                            "file": {
                                "file_data": f"data:application/pdf;base64,{PDF}",
                                "filename": "report.pdf",
                            },
                        },
                        {"type": "file", "file": {"file_data": PDF}},
                    ],
                }
            ]
        },
        base(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "document",
                            "title": "report.pdf",
                            "source": {
                                "type": "base64",
                                "media_type": "application/pdf",
                                "data": PDF,
                            },
                        },
                        {
                            "type": "document",
                            "source": {
                                "type": "base64",
                                "media_type": "application/pdf",
                                "data": PDF,
                            },
                        },
                    ],
                }
            ]
        ),
    ),
    (
        "strict json_schema -> Anthropic structured output",
        {
            "messages": HI,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "answer", "strict": True, "schema": SCHEMA},
            },
        },
        base(output_config={"format": {"type": "json_schema", "schema": SCHEMA}}),
    ),
    (
        "json_schema without strict -> the forced JSON tool",
        {
            "messages": HI,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "answer", "description": "The answer.", "schema": SCHEMA},
            },
        },
        base(
            tools=[{"name": "json_response", "description": "The answer.", "input_schema": SCHEMA}],
            tool_choice={
                "type": "tool",
                "name": "json_response",
                "disable_parallel_tool_use": True,
            },
        ),
    ),
    (
        "json_object beside client tools: any tool, the JSON one included",
        {"messages": HI, "tools": [WEATHER], "response_format": {"type": "json_object"}},
        base(
            tools=[
                WEATHER_TOOL,
                {
                    "name": "json_response",
                    "description": "Answer with a JSON object.",
                    "input_schema": {"type": "object"},
                },
            ],
            tool_choice={"type": "any"},
        ),
    ),
    (
        "json_object with tool_choice none: only the JSON tool",
        {
            "messages": HI,
            "tools": [WEATHER],
            "tool_choice": "none",
            "response_format": {"type": "json_object"},
        },
        base(
            tools=[
                WEATHER_TOOL,
                {
                    "name": "json_response",
                    "description": "Answer with a JSON object.",
                    "input_schema": {"type": "object"},
                },
            ],
            tool_choice={
                "type": "tool",
                "name": "json_response",
                "disable_parallel_tool_use": True,
            },
        ),
    ),
    (
        "reasoning_effort without a cap: the default plus the budget",
        {"messages": HI, "reasoning_effort": "medium"},
        base(max_tokens=DEFAULT_MAX + 8192, thinking={"type": "enabled", "budget_tokens": 8192}),
    ),
    (
        "reasoning_effort under a cap: half the cap at most",
        {
            "messages": HI,
            "reasoning_effort": "high",
            "max_completion_tokens": 4000,
            "temperature": 1,
            "top_p": 0.97,
            "tools": [WEATHER],
            "tool_choice": "auto",
        },
        base(
            max_tokens=4000,
            thinking={"type": "enabled", "budget_tokens": 2000},
            temperature=1,
            top_p=0.97,
            tools=[WEATHER_TOOL],
            tool_choice={"type": "auto"},
        ),
    ),
    (
        "reasoning_effort minimal",
        {"messages": HI, "reasoning_effort": "minimal", "max_tokens": 1500},
        base(max_tokens=1500, thinking={"type": "enabled", "budget_tokens": 1024}),
    ),
]


@pytest.mark.parametrize(
    ("body", "expected"), [c[1:] for c in REQUESTS], ids=[c[0] for c in REQUESTS]
)
def test_request_translation(body: dict[str, Any], expected: dict[str, Any]) -> None:
    translated, headers = chat_to_messages({"model": "anthropic/x", **body}, MODEL, DEFAULT_MAX)
    assert translated == expected
    assert headers == {}


def test_translation_leaves_the_client_body_unchanged() -> None:
    body = {
        "model": "anthropic/x",
        "messages": [*TOOL_LOOP],
        "tools": [WEATHER],
        "response_format": {"type": "json_object"},
    }
    before = repr(body)
    chat_to_messages(body, MODEL, DEFAULT_MAX)
    assert repr(body) == before
