"""Any JSON value a client sends is either taken or refused with a 400 naming what is wrong,
never an exception: the edge's request parsing, the hosted request models and the checks and
translations of the upstream paths, tried with hypothesis over generated JSON bodies."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.edge.body import json_object, validate
from services.edge.errors import APIError
from services.edge.openai import bounds, responses_translate
from services.edge.openai.protocol import ChatCompletionRequest, CompletionRequest
from services.edge.providers.anthropic_chat_request import chat_to_messages

FIELDS = sorted(
    set(ChatCompletionRequest.model_fields)
    | set(CompletionRequest.model_fields)
    | {"input", "instructions", "text", "reasoning", "max_output_tokens", "type", "role"}
    | {"content", "function", "name", "arguments", "tool_call_id", "json_schema", "schema"}
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["user", "assistant", "tool", "system", "function", "text", "json_schema"])
)
keys = st.sampled_from(FIELDS) | st.text(min_size=1, max_size=8)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=24,
)
messages = st.lists(
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=4)
    | st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "tool", "system"]), "content": json_values}
    ),
    max_size=3,
)
bodies = st.dictionaries(keys, json_values, max_size=6) | st.builds(
    lambda extra, msgs, model: {**extra, "messages": msgs, "model": model, "input": msgs},
    st.dictionaries(keys, json_values, max_size=4),
    messages,
    st.sampled_from(["smollm2-135m-instruct", "openai/gpt-4o", "", "m" * 300]) | json_values,
)


def hosted_chat(body: dict[str, Any]) -> None:
    validate(body, ChatCompletionRequest)


def hosted_completion(body: dict[str, Any]) -> None:
    validate(body, CompletionRequest)


def responses_on_a_hosted_model(body: dict[str, Any]) -> None:
    plan = responses_translate.to_chat(body, [])
    validate(plan.chat, ChatCompletionRequest)


def upstream_chat(body: dict[str, Any]) -> None:
    bounds.check_chat_body(body)
    bounds.chat_prompt_bound(body, len(json.dumps(body)), 1000)
    bounds.completion_limit(body)


def upstream_responses(body: dict[str, Any]) -> None:
    bounds.check_responses_body(body)
    bounds.responses_prompt_bound(body, len(json.dumps(body)), 1000)


def chat_for_anthropic(body: dict[str, Any]) -> None:
    chat_to_messages(body, "claude-x", 1024)


def embeddings(body: dict[str, Any]) -> None:
    bounds.embeddings_input_bound(body.get("input"))


PATHS: dict[str, Callable[[dict[str, Any]], None]] = {
    "hosted chat": hosted_chat,
    "hosted completion": hosted_completion,
    "Responses on a hosted model": responses_on_a_hosted_model,
    "upstream chat": upstream_chat,
    "upstream Responses": upstream_responses,
    "chat translated for Anthropic": chat_for_anthropic,
    "embeddings": embeddings,
}


def refused_well(err: APIError) -> None:
    assert err.status == 400
    assert err.message
    assert err.type == "invalid_request_error"


@pytest.mark.parametrize("path", list(PATHS))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies)
def test_any_json_body_is_taken_or_refused_naming_a_field(path: str, body: dict[str, Any]) -> None:
    raw = json.dumps(body).encode()
    parsed = json_object(raw)
    try:
        PATHS[path](parsed)
    except APIError as err:
        refused_well(err)
        assert err.param, f"{path}: a refusal of a JSON object names its field: {err.message}"


@settings(max_examples=300, deadline=None)
@given(value=json_values)
def test_any_json_value_is_an_object_or_a_400(value: Any) -> None:
    try:
        body = json_object(json.dumps(value).encode())
    except APIError as err:
        refused_well(err)
        assert not isinstance(value, dict)
    else:
        assert body == value


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_any_bytes_are_json_or_a_400(raw: bytes) -> None:
    try:
        json_object(raw)
    except APIError as err:
        refused_well(err)
