"""The Anthropic stand-in speaks the Messages API's documented wire format: tool_use answers
streamed and not, the tool-loop rule, forced tools, count_tokens, cache usage, and 400s for the
content blocks and pairings the real API refuses. Driven with httpx and the `anthropic` SDK."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest

from tests.fakes.anthropic_upstream import anthropic_fake
from tests.fakes.harness import RunningFake

KEY = "sk-ant-api03-test0123456789"
HEADERS = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
WEATHER = {
    "name": "get_weather",
    "description": "Weather of a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
CALLS = [
    {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'},
    {"name": "get_weather", "arguments": '{"city": "Rome", "unit": "celsius"}'},
]
ASK = [{"role": "user", "content": "Weather in Paris and Rome?"}]
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n0000").decode()


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


@pytest.fixture
def client(fake: RunningFake) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=fake.url, api_key=KEY, max_retries=0) as sdk:
        yield sdk


def create(http: httpx.Client, **body: Any) -> httpx.Response:
    return http.post("/v1/messages", json={"model": "claude-sonnet-4-5", "max_tokens": 256, **body})


def events(http: httpx.Client, **body: Any) -> list[dict[str, Any]]:
    response = create(http, stream=True, **body)
    assert response.status_code == 200, response.text
    parsed = []
    for block in response.text.strip().split("\n\n"):
        name, data = block.split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert name == f"event: {event['type']}"
        parsed.append(event)
    return parsed


def test_tool_use_after_text(fake: RunningFake, http: httpx.Client) -> None:
    fake.script(reply="Checking both.", tool_calls=CALLS)
    message = create(http, messages=ASK, tools=[WEATHER]).json()
    assert message["stop_reason"] == "tool_use"
    text, *uses = message["content"]
    assert text == {"type": "text", "text": "Checking both."}
    assert [(u["type"], u["name"], u["input"]) for u in uses] == [
        ("tool_use", "get_weather", {"city": "Paris", "unit": "celsius"}),
        ("tool_use", "get_weather", {"city": "Rome", "unit": "celsius"}),
    ]
    ids = [u["id"] for u in uses]
    assert all(i.startswith("toolu_") for i in ids) and len(set(ids)) == 2


def test_tool_use_alone(fake: RunningFake, http: httpx.Client) -> None:
    fake.script(reply="", tool_calls=CALLS[:1])
    content = create(http, messages=ASK, tools=[WEATHER]).json()["content"]
    assert [b["type"] for b in content] == ["tool_use"]


def test_streamed_tool_use(fake: RunningFake, http: httpx.Client) -> None:
    fake.script(reply="Checking.", tool_calls=CALLS, prompt_tokens=40)
    stream = events(http, messages=ASK, tools=[WEATHER])
    kinds = [e["type"] for e in stream]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    starts = [e for e in stream if e["type"] == "content_block_start"]
    assert [s["content_block"]["type"] for s in starts] == ["text", "tool_use", "tool_use"]
    assert all(s["content_block"]["input"] == {} for s in starts[1:])
    for start, scripted in zip(starts[1:], CALLS, strict=True):
        parts = [
            e["delta"]["partial_json"]
            for e in stream
            if e["type"] == "content_block_delta" and e["index"] == start["index"]
        ]
        assert all(
            e["delta"]["type"] == "input_json_delta"
            for e in stream
            if e["type"] == "content_block_delta" and e["index"] == start["index"]
        )
        assert len(parts) > 2 and "".join(parts) == scripted["arguments"]
    stops = [e["index"] for e in stream if e["type"] == "content_block_stop"]
    assert stops == [0, 1, 2]
    final = stream[-2]
    assert final["delta"]["stop_reason"] == "tool_use" and final["usage"]["output_tokens"] > 0


def test_a_tool_result_is_answered_with_text(fake: RunningFake, http: httpx.Client) -> None:
    fake.script(reply="Sunny in Paris.", tool_calls=CALLS[:1])
    history = [
        *ASK,
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                }
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}],
        },
    ]
    message = create(http, messages=history, tools=[WEATHER]).json()
    assert (message["content"], message["stop_reason"]) == (
        [{"type": "text", "text": "Sunny in Paris."}],
        "end_turn",
    )
    stream = events(http, messages=history, tools=[WEATHER])
    text = "".join(e["delta"].get("text", "") for e in stream if e["type"] == "content_block_delta")
    assert text == "Sunny in Paris."


def test_a_forced_tool_is_called(fake: RunningFake, http: httpx.Client) -> None:
    fake.script(reply='{"answer": "yes"}')
    json_tool = {"name": "json_response", "input_schema": {"type": "object"}}
    body = {
        "messages": ASK,
        "tools": [json_tool],
        "tool_choice": {"type": "tool", "name": "json_response"},
    }
    [use] = create(http, **body).json()["content"]
    assert (use["name"], use["input"]) == ("json_response", {"answer": "yes"})
    stream = events(http, **body)
    parts = [e["delta"]["partial_json"] for e in stream if e["type"] == "content_block_delta"]
    assert "".join(parts) == '{"answer": "yes"}'


def test_cache_usage(fake: RunningFake, http: httpx.Client) -> None:
    fake.script(prompt_tokens=100, cached_tokens=60, cache_creation_tokens=30)
    usage = create(http, messages=ASK).json()["usage"]
    assert usage["input_tokens"] == 10
    assert (usage["cache_read_input_tokens"], usage["cache_creation_input_tokens"]) == (60, 30)
    start = events(http, messages=ASK)[0]["message"]["usage"]
    assert start["cache_creation_input_tokens"] == 30


def test_count_tokens(fake: RunningFake, http: httpx.Client) -> None:
    fake.script(prompt_tokens=77)
    body = {"model": "claude-sonnet-4-5", "messages": ASK, "tools": [WEATHER]}
    counted = http.post("/v1/messages/count_tokens", json=body)
    assert counted.json() == {"input_tokens": 77}
    no_key = http.post("/v1/messages/count_tokens", json=body, headers={"x-api-key": ""})
    assert no_key.status_code == 401 and no_key.json()["error"]["type"] == "authentication_error"
    no_version = httpx.post(
        fake.url + "/v1/messages/count_tokens", json=body, headers={"x-api-key": KEY}
    )
    assert no_version.status_code == 400
    bad = http.post("/v1/messages/count_tokens", json={**body, "messages": []})
    assert bad.json()["error"]["type"] == "invalid_request_error"
    assert [r["outcome"] for r in fake.requests()] == [
        "completed",
        "rejected",
        "rejected",
        "rejected",
    ]


def test_the_key_comes_as_x_api_key_or_bearer(fake: RunningFake, http: httpx.Client) -> None:
    fake.script(expected_key=KEY)
    body = {"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": ASK}
    version = {"anthropic-version": "2023-06-01"}
    bearer = httpx.post(
        fake.url + "/v1/messages", json=body, headers={**version, "authorization": f"Bearer {KEY}"}
    )
    wrong = httpx.post(
        fake.url + "/v1/messages",
        json=body,
        headers={**version, "authorization": "Bearer sk-ant-wrong"},
    )
    assert (bearer.status_code, wrong.status_code) == (200, 401)
    assert create(http, messages=ASK).status_code == 200


def test_every_block_kind_is_accepted(http: httpx.Client) -> None:
    pdf = base64.b64encode(b"%PDF-1.7").decode()
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Look.", "cache_control": {"type": "ephemeral"}},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                },
                {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
                {
                    "type": "document",
                    "source": {"type": "base64", "media_type": "application/pdf", "data": pdf},
                },
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                {"type": "text", "text": "Two calls."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}},
                {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "is_error": True,
                    "content": [{"type": "text", "text": "timeout"}],
                },
                {"type": "text", "text": "Go on."},
            ],
        },
    ]
    response = create(
        http,
        messages=messages,
        tools=[WEATHER],
        system=[{"type": "text", "text": "Rules."}],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        temperature=0.5,
        metadata={"user_id": "u1"},
        stop_sequences=["END"],
        output_config={"format": {"type": "json_schema", "schema": {"type": "object"}}},
    )
    assert response.status_code == 200, response.text


USE = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}
RESULT = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}


def _turns(*contents: Any) -> list[dict[str, Any]]:
    roles = ["user", "assistant"]
    return [{"role": roles[i % 2], "content": c} for i, c in enumerate(contents)]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"messages": _turns("Hi", [USE])}, "messages.1: `tool_use` ids were found without"),
        ({"messages": _turns("Hi", [USE], [{"type": "text", "text": "?"}])}, "toolu_1"),
        ({"messages": _turns([RESULT])}, "messages.0.content.0: unexpected `tool_use_id`"),
        (
            {"messages": _turns("Hi", [USE], [{"type": "text", "text": "x"}, RESULT])},
            "must come first",
        ),
        ({"messages": _turns([USE])}, "tool_use blocks may only appear in assistant"),
        ({"messages": _turns([{"type": "text", "text": ""}])}, "must be non-empty"),
        (
            {
                "messages": _turns(
                    [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/bmp", "data": PNG},
                        }
                    ]
                )
            },
            "messages.0.content.0.source.media_type",
        ),
        (
            {"messages": _turns([{"type": "image", "source": {"type": "url", "url": "ftp://x"}}])},
            "source.url",
        ),
        (
            {
                "messages": _turns(
                    [{"type": "image", "source": {"type": "base64", "media_type": "image/png"}}]
                )
            },
            "source.data",
        ),
        ({"messages": _turns([{"type": "audio", "data": "x"}])}, "messages.0.content.0.type"),
        ({"messages": ASK, "tools": [{"name": "f"}]}, "tools.0.input_schema"),
        ({"messages": ASK, "tools": [{"input_schema": {"type": "object"}}]}, "tools.0.name"),
        (
            {"messages": ASK, "tools": [WEATHER], "tool_choice": {"type": "required"}},
            "tool_choice.type",
        ),
        (
            {"messages": ASK, "tools": [WEATHER], "tool_choice": {"type": "tool", "name": "x"}},
            "tool_choice.name",
        ),
        (
            {
                "messages": ASK,
                "tools": [WEATHER],
                "tool_choice": {"type": "none", "disable_parallel_tool_use": True},
            },
            "tool_choice.disable_parallel_tool_use",
        ),
        ({"messages": ASK, "tool_choice": {"type": "any"}}, "tools must be provided"),
        (
            {"messages": ASK, "output_config": {"format": {"type": "json_object"}}},
            "output_config.format.type",
        ),
        (
            {"messages": ASK, "output_config": {"format": {"type": "json_schema"}}},
            "output_config.format.schema",
        ),
        ({"messages": ASK, "temperature": 1.5}, "temperature"),
        ({"messages": ASK, "thinking": {"type": "enabled", "budget_tokens": 512}}, "budget_tokens"),
        ({"messages": ASK, "thinking": {"type": "enabled", "budget_tokens": 2048}}, "max_tokens"),
        ({"messages": ASK, "metadata": {"team": "a"}}, "metadata"),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
            "alternate",
        ),
    ],
)
def test_refusals(
    fake: RunningFake, http: httpx.Client, body: dict[str, Any], fragment: str
) -> None:
    response = create(http, **body)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert fragment in error["error"]["message"]
    assert fake.requests()[-1]["outcome"] == "rejected"


# The official SDK parses what the stand-in sends.


def test_sdk_plain_message(fake: RunningFake, client: anthropic.Anthropic) -> None:
    fake.script(reply="Hello there.", prompt_tokens=12, cached_tokens=4)
    message = client.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=ASK)
    assert [b.text for b in message.content if b.type == "text"] == ["Hello there."]
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens) == (8, 4)


def test_sdk_tool_use(fake: RunningFake, client: anthropic.Anthropic) -> None:
    fake.script(reply="", tool_calls=CALLS)
    message = client.messages.create(
        model="claude-sonnet-4-5", max_tokens=64, messages=ASK, tools=[WEATHER]
    )
    assert message.stop_reason == "tool_use"
    assert [b.input for b in message.content if b.type == "tool_use"] == [
        json.loads(c["arguments"]) for c in CALLS
    ]


def test_sdk_stream_final_message_with_tool_use(
    fake: RunningFake, client: anthropic.Anthropic
) -> None:
    fake.script(reply="Checking.", tool_calls=CALLS)
    with client.messages.stream(
        model="claude-sonnet-4-5", max_tokens=64, messages=ASK, tools=[WEATHER]
    ) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(texts) == "Checking."
    assert final.stop_reason == "tool_use"
    uses = [b for b in final.content if b.type == "tool_use"]
    assert [(b.name, b.input) for b in uses] == [
        ("get_weather", {"city": "Paris", "unit": "celsius"}),
        ("get_weather", {"city": "Rome", "unit": "celsius"}),
    ]
    assert final.usage.output_tokens > 1


def test_sdk_count_tokens(fake: RunningFake, client: anthropic.Anthropic) -> None:
    fake.script(prompt_tokens=31)
    counted = client.messages.count_tokens(model="claude-sonnet-4-5", messages=ASK, tools=[WEATHER])
    assert counted.input_tokens == 31


def test_sdk_sees_anthropic_errors(fake: RunningFake, client: anthropic.Anthropic) -> None:
    fake.script(fail_next=1, fail_status=529, error_message="Overloaded")
    with pytest.raises(anthropic.OverloadedError):
        client.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=ASK)
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=_turns([RESULT]))
    assert "tool_use_id" in str(info.value)
    fake.script(error_event_after_chunks=1, chunks=["a", "b", "c"])
    with (
        pytest.raises(anthropic.APIStatusError),
        client.messages.stream(model="claude-sonnet-4-5", max_tokens=8, messages=ASK) as stream,
    ):
        stream.get_final_message()
