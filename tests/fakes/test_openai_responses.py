"""The OpenAI stand-in's Responses API speaks OpenAI's wire format: answers and streams the
official SDK parses (its stream helpers included), the tool-loop rule with the whole input and
with previous_response_id, stored responses by id, and the real API's 400s."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.harness import RunningFake
from tests.fakes.openai_upstream import openai_fake

KEY = "sk-proj-test0123456789"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
CALLS = [{"name": "get_weather", "arguments": '{"city": "Paris"}'}]


@pytest.fixture(scope="module")
def fake() -> Iterator[RunningFake]:
    with openai_fake() as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh(fake: RunningFake) -> None:
    fake.reset()


@pytest.fixture
def http(fake: RunningFake) -> Iterator[httpx.Client]:
    headers = {"authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=fake.url + "/v1", headers=headers, timeout=5) as client:
        yield client


@pytest.fixture
def client(fake: RunningFake) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=fake.url + "/v1", api_key=KEY, max_retries=0) as sdk:
        yield sdk


def events(text: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_a_text_answer(fake: RunningFake, client: openai.OpenAI) -> None:
    fake.script(reply="Hello there.", prompt_tokens=21, cached_tokens=5)
    response = client.responses.create(model="gpt-4o-mini", input="Hi", instructions="Be nice.")
    assert response.output_text == "Hello there."
    assert response.status == "completed" and response.id.startswith("resp_")
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (21, 2)
    assert response.usage.input_tokens_details.cached_tokens == 5
    assert fake.requests()[0]["body"]["instructions"] == "Be nice."


def test_a_stream_in_the_documented_order(fake: RunningFake, http: httpx.Client) -> None:
    fake.script(reply="Hello there.")
    resp = http.post("/responses", json={"model": "gpt-4o-mini", "input": "Hi", "stream": True})
    got = events(resp.text)
    assert [name for name, _ in got] == [data["type"] for _, data in got]
    assert [name for name, _ in got] == [
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
    assert [data["sequence_number"] for _, data in got] == list(range(len(got)))
    assert got[-1][1]["response"]["usage"]["output_tokens"] == 2


def test_the_sdk_stream_helpers(fake: RunningFake, client: openai.OpenAI) -> None:
    fake.script(reply="", tool_calls=CALLS)
    with client.responses.stream(model="gpt-4o-mini", input="Weather?", tools=[WEATHER]) as s:
        deltas = [e.delta for e in s if e.type == "response.function_call_arguments.delta"]
        final = s.get_final_response()
    (call,) = final.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert "".join(deltas) == call.arguments == '{"city": "Paris"}'


@pytest.mark.parametrize("chained", [False, True])
def test_the_tool_loop(fake: RunningFake, client: openai.OpenAI, chained: bool) -> None:
    fake.script(tool_calls=CALLS, reply="Sunny in Paris.")
    first = client.responses.create(model="gpt-4o-mini", input="Weather?", tools=[WEATHER])
    (message, call) = first.output
    assert message.type == "message" and call.type == "function_call"
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny"}
    if chained:
        second = client.responses.create(
            model="gpt-4o-mini", input=[result], previous_response_id=first.id, tools=[WEATHER]
        )
    else:
        whole: list[Any] = [{"role": "user", "content": "Weather?"}]
        whole += [item.model_dump(exclude_none=True) for item in first.output] + [result]
        second = client.responses.create(model="gpt-4o-mini", input=whole, tools=[WEATHER])
    assert second.output_text == "Sunny in Paris."
    assert fake.requests()[1]["body"].get("previous_response_id") == (first.id if chained else None)


def test_stored_responses_by_id(fake: RunningFake, client: openai.OpenAI) -> None:
    kept = client.responses.create(model="gpt-4o-mini", input="Hi")
    assert client.responses.retrieve(kept.id).output_text == kept.output_text
    client.responses.delete(kept.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(kept.id)
    unkept = client.responses.create(model="gpt-4o-mini", input="Hi", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unkept.id)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "Hi", "previous_response_id": "resp_unknown"}, "previous_response_id"),
        ({"input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]}, "input"),
        ({"input": "Hi", "max_output_tokens": 8}, "max_output_tokens"),
        ({}, "input"),
        ({"input": "Hi", "tools": [{"type": "function"}]}, "tools[0].name"),
    ],
)
def test_what_the_real_api_refuses(http: httpx.Client, body: dict[str, Any], param: str) -> None:
    resp = http.post("/responses", json={"model": "gpt-4o-mini", **body})
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == param


def test_a_stream_that_breaks(fake: RunningFake, http: httpx.Client) -> None:
    fake.script(reply="one two three", error_event_after_chunks=1)
    resp = http.post("/responses", json={"model": "gpt-4o-mini", "input": "Hi", "stream": True})
    got = events(resp.text)
    assert got[-1][0] == "error" and got[-1][1]["code"] == "server_error"
    assert [n for n, _ in got].count("response.output_text.delta") == 1
    assert fake.requests()[0]["outcome"] == "error_event"


def test_incomplete_when_the_cap_is_reached(fake: RunningFake, client: openai.OpenAI) -> None:
    fake.script(reply="Hel", finish_reason="max_output_tokens")
    response = client.responses.create(model="gpt-4o-mini", input="Hi", max_output_tokens=16)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
