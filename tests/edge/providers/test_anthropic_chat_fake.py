"""The translation against the Anthropic stand-in, which checks bodies as the real API does:
every translated request is accepted, and a tool loop and a JSON answer make the round trip,
streamed and not, ending as the OpenAI SDK reads them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from services.edge.providers.anthropic_chat import (
    StreamTranslator,
    chat_to_messages,
    message_to_completion,
)
from tests.edge.providers.test_anthropic_chat_request import MODEL, REQUESTS, WEATHER
from tests.fakes.anthropic_upstream import anthropic_fake
from tests.fakes.harness import RunningFake

HEADERS = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}
CALLS = [
    {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    {"name": "get_weather", "arguments": '{"city": "Rome"}'},
]


@pytest.fixture(scope="module")
def fake() -> Iterator[RunningFake]:
    with anthropic_fake() as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh(fake: RunningFake) -> None:
    fake.reset()


@pytest.fixture
def http(fake: RunningFake) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.url, headers=HEADERS, timeout=5) as client:
        yield client


def send(http: httpx.Client, openai_body: dict[str, Any]) -> tuple[dict[str, Any], httpx.Response]:
    body, headers = chat_to_messages(openai_body, MODEL, 1024)
    return body, http.post("/v1/messages", json=body, headers=headers)


def completion(http: httpx.Client, openai_body: dict[str, Any]) -> dict[str, Any]:
    _, response = send(http, openai_body)
    assert response.status_code == 200, response.text
    done = message_to_completion(
        response.json(), model="anthropic/" + MODEL, completion_id="chatcmpl-1", created=1
    )
    ChatCompletion.model_validate(done)
    return done


def streamed(http: httpx.Client, openai_body: dict[str, Any]) -> Any:
    """The OpenAI SDK's accumulated completion of the translated stream."""
    _, response = send(
        http, {**openai_body, "stream": True, "stream_options": {"include_usage": True}}
    )
    assert response.status_code == 200, response.text
    translator = StreamTranslator(
        model="anthropic/" + MODEL, completion_id="chatcmpl-1", created=1, include_usage=True
    )
    state: ChatCompletionStreamState[None] = ChatCompletionStreamState()
    for block in response.text.strip().split("\n\n"):
        data = next(line for line in block.split("\n") if line.startswith("data: "))
        for chunk in translator.feed(json.loads(data.removeprefix("data: "))):
            list(state.handle_chunk(ChatCompletionChunk.model_validate(chunk)))
    assert translator.finished
    return state.get_final_completion()


@pytest.mark.parametrize("openai_body", [c[1] for c in REQUESTS], ids=[c[0] for c in REQUESTS])
def test_every_translated_request_is_accepted(
    http: httpx.Client, openai_body: dict[str, Any]
) -> None:
    _, response = send(http, {"model": "anthropic/x", **openai_body})
    assert response.status_code == 200, response.text


def test_a_tool_loop_round_trip(fake: RunningFake, http: httpx.Client) -> None:
    fake.script(reply="Sunny in Paris, rain in Rome.", tool_calls=CALLS)
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Paris and Rome?"}]
    body = {"model": "anthropic/x", "messages": messages, "tools": [WEATHER]}
    first = completion(http, body)["choices"][0]
    assert first["finish_reason"] == "tool_calls"
    calls = first["message"]["tool_calls"]
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [
        {"city": "Paris"},
        {"city": "Rome"},
    ]
    # The client runs the tools and sends the results back, replaying the assistant message.
    messages.append(first["message"])
    for call, result in zip(calls, ["sunny", "rain"], strict=True):
        messages.append({"role": "tool", "tool_call_id": call["id"], "content": result})
    second = completion(http, body)["choices"][0]
    assert (second["message"]["content"], second["finish_reason"]) == (
        "Sunny in Paris, rain in Rome.",
        "stop",
    )
    sent = fake.requests()[-1]["body"]["messages"]
    assert [b["tool_use_id"] for b in sent[-1]["content"]] == [c["id"] for c in calls]


def test_a_streamed_tool_loop(fake: RunningFake, http: httpx.Client) -> None:
    fake.script(reply="", tool_calls=CALLS, prompt_tokens=50, cached_tokens=20)
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather?"}]
    body = {"model": "anthropic/x", "messages": messages, "tools": [WEATHER]}
    final = streamed(http, body)
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    calls = choice.message.tool_calls or []
    assert [c.function.arguments for c in calls] == [c["arguments"] for c in CALLS]
    assert final.usage.prompt_tokens == 50
    assert final.usage.prompt_tokens_details.cached_tokens == 20
    messages.append(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.function.name, "arguments": c.function.arguments},
                }
                for c in calls
            ],
        }
    )
    messages += [{"role": "tool", "tool_call_id": c.id, "content": "ok"} for c in calls]
    fake.script(reply="Both fine.")
    assert streamed(http, body).choices[0].message.content == "Both fine."


@pytest.mark.parametrize(
    "fmt",
    [
        {"type": "json_object"},
        {
            "type": "json_schema",
            "json_schema": {
                "name": "answer",
                "schema": {"type": "object", "properties": {"ok": {"type": "boolean"}}},
            },
        },
    ],
)
def test_json_through_the_forced_tool(
    fake: RunningFake, http: httpx.Client, fmt: dict[str, Any]
) -> None:
    fake.script(reply='{"ok": true}')
    body = {
        "model": "anthropic/x",
        "messages": [{"role": "user", "content": "Ok? JSON."}],
        "response_format": fmt,
    }
    choice = completion(http, body)["choices"][0]
    assert (json.loads(choice["message"]["content"]), choice["finish_reason"]) == (
        {"ok": True},
        "stop",
    )
    final = streamed(http, body).choices[0]
    assert (json.loads(final.message.content or ""), final.finish_reason) == ({"ok": True}, "stop")


def test_strict_json_schema_through_structured_output(
    fake: RunningFake, http: httpx.Client
) -> None:
    fake.script(reply='{"ok": true}')
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    body = {
        "model": "anthropic/x",
        "messages": [{"role": "user", "content": "Ok?"}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "answer", "strict": True, "schema": schema},
        },
    }
    assert json.loads(completion(http, body)["choices"][0]["message"]["content"]) == {"ok": True}
    assert fake.requests()[-1]["body"]["output_config"] == {
        "format": {"type": "json_schema", "schema": schema}
    }
