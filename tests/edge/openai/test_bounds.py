"""Reservation bounds of upstream requests, one body per case."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.edge.errors import APIError
from services.edge.openai import bounds
from services.edge.openai.bounds import (
    FIXED_OVERHEAD_TOKENS as FIXED,
)
from services.edge.openai.bounds import (
    MESSAGE_OVERHEAD_TOKENS as PER_MESSAGE,
)
from services.edge.openai.bounds import (
    TOOL_OVERHEAD_TOKENS as PER_TOOL,
)

IMAGE = 1_000
DATA_URL = "data:image/png;base64," + "A" * 4000


def user(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"role": "user", "content": list(parts)}


def bound(body: dict[str, Any]) -> int | None:
    return bounds.chat_prompt_bound(body, len(json.dumps(body).encode()), IMAGE)


def test_text_is_bounded_by_its_bytes_and_framing() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "héllo"}]}
    assert bound(body) == len(json.dumps(body).encode()) + PER_MESSAGE + FIXED


def test_tools_get_an_allowance_each() -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [tool, tool]}
    assert bound(body) == len(json.dumps(body).encode()) + PER_MESSAGE + 2 * PER_TOOL + FIXED


@pytest.mark.parametrize(
    ("part", "counted_as_text"),
    [
        ({"type": "image_url", "image_url": {"url": DATA_URL}}, False),
        ({"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}, True),
        ({"type": "image_url", "image_url": DATA_URL}, False),
    ],
)
def test_an_image_costs_the_models_maximum_not_its_bytes(
    part: dict[str, Any], counted_as_text: bool
) -> None:
    body = {"model": "m", "messages": [user({"type": "text", "text": "what is this?"}, part)]}
    raw = len(json.dumps(body).encode())
    url = part["image_url"] if isinstance(part["image_url"], str) else part["image_url"]["url"]
    text = raw if counted_as_text else raw - len(url)
    assert bound(body) == text + PER_MESSAGE + FIXED + IMAGE


def test_audio_is_bounded_by_its_base64_bytes() -> None:
    audio = {"type": "input_audio", "input_audio": {"data": "B" * 3000, "format": "wav"}}
    body = {"model": "m", "messages": [user(audio)]}
    assert bound(body) == len(json.dumps(body).encode()) + PER_MESSAGE + FIXED


def test_a_file_is_bounded_by_the_context_only() -> None:
    pdf = {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBE"}}
    assert bound({"model": "m", "messages": [user(pdf)]}) is None


def test_completion_limit_and_choices() -> None:
    assert bounds.completion_limit({}) is None
    assert bounds.completion_limit({"max_tokens": 7}) == 7
    assert bounds.completion_limit({"max_tokens": 7, "max_completion_tokens": 9}) == 9
    assert bounds.choices({}) == 1 and bounds.choices({"n": 3}) == 3


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("hello", 6),
        (["a", "bc"], 2 + 3),
        ([1, 2, 3], 3),
        ([[1, 2], [3]], 3),
    ],
)
def test_embeddings_input_bound(value: Any, expected: int) -> None:
    assert bounds.embeddings_input_bound(value) == expected


@pytest.mark.parametrize("value", [[], 3, None, [1, "a"], [[1], "a"], [True], {"a": 1}])
def test_bad_embeddings_input_names_the_field(value: Any) -> None:
    with pytest.raises(APIError) as err:
        bounds.embeddings_input_bound(value)
    assert (err.value.status, err.value.param) == (400, "input")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": ["hi"]}, "messages[0]"),
        ({"messages": [{}], "max_tokens": 0}, "max_tokens"),
        ({"messages": [{}], "max_tokens": True}, "max_tokens"),
        ({"messages": [{}], "max_completion_tokens": "9"}, "max_completion_tokens"),
        ({"messages": [{}], "n": 129}, "n"),
        ({"messages": [{}], "stream": "yes"}, "stream"),
        ({"messages": [{}], "stream_options": []}, "stream_options"),
    ],
)
def test_governed_fields_are_checked_before_any_hop(body: dict[str, Any], param: str) -> None:
    with pytest.raises(APIError) as err:
        bounds.check_chat_body(body)
    assert (err.value.status, err.value.param) == (400, param)


def test_everything_else_is_the_providers_to_validate() -> None:
    bounds.check_chat_body(
        {"messages": [{"role": "whatever"}], "tools": "odd", "n": 2, "stream": None}
    )
