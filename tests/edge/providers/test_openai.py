"""The documented edits of a forwarded OpenAI request and of its answer."""

from __future__ import annotations

from typing import Any

import pytest

from services.edge.providers import openai
from services.edge.providers.base import SSEEvent

BODY: dict[str, Any] = {
    "model": "openai/gpt-4o-mini",
    "messages": [{"role": "user", "content": "hi"}],
    "tools": [{"type": "function", "function": {"name": "f"}}],
    "some_future_field": {"a": [1, 2]},
}


def test_only_the_model_changes_by_default() -> None:
    out = openai.forward_body(BODY, "gpt-4o-mini", completion_cap=None, usage_in_stream=True)
    assert out == {**BODY, "model": "gpt-4o-mini"}
    assert BODY["model"] == "openai/gpt-4o-mini"  # the client's body is not modified


def test_a_stream_asks_for_usage_keeping_the_clients_options() -> None:
    body = {**BODY, "stream": True, "stream_options": {"include_obfuscation": False}}
    out = openai.forward_body(body, "gpt-4o-mini", completion_cap=None, usage_in_stream=True)
    assert out["stream_options"] == {"include_obfuscation": False, "include_usage": True}
    assert not openai.client_wants_usage(body)
    assert openai.client_wants_usage({"stream_options": {"include_usage": True}})


@pytest.mark.parametrize(
    ("sent", "cap", "edited"),
    [
        ({}, 100, {"max_completion_tokens": 100}),
        ({"max_tokens": 500}, 100, {"max_tokens": 100}),
        ({"max_tokens": 50}, 100, {"max_tokens": 50}),
        ({"max_completion_tokens": 500}, 100, {"max_completion_tokens": 100}),
        ({"max_tokens": 500, "max_completion_tokens": 50}, 100, {"max_completion_tokens": 50}),
    ],
)
def test_a_plan_cap_lowers_the_clients_own_field(
    sent: dict[str, int], cap: int, edited: dict[str, int]
) -> None:
    out = openai.forward_body({**BODY, **sent}, "m", completion_cap=cap, usage_in_stream=True)
    assert {k: out[k] for k in ("max_tokens", "max_completion_tokens") if k in out} == {
        **sent,
        **edited,
    }


def test_public_model_names() -> None:
    assert openai.public_model("gpt-4o-mini-2024-07-18", "x") == "openai/gpt-4o-mini-2024-07-18"
    assert openai.public_model(None, "gpt-4o") == "openai/gpt-4o"
    assert openai.public_model("openai/gpt-4o", "x") == "openai/gpt-4o"


def test_error_events() -> None:
    failure = openai.event_error(SSEEvent("", '{"error": {"message": "boom", "code": "x"}}'))
    assert failure is not None and (failure.kind, failure.detail, failure.code) == (
        "stream",
        "boom",
        "x",
    )
    assert openai.event_error(SSEEvent("", '{"choices": [], "error": null}')) is None
    assert openai.event_error(SSEEvent("", "[DONE]")) is None
