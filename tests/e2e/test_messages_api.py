"""The Anthropic Messages API at the edge, driven by the official `anthropic` SDK: plain,
streamed and with tools, the key as x-api-key or bearer, headers passed on, answers unchanged,
token counting, and errors in Anthropic's shape."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import pytest

from tests.e2e.processes import Services
from tests.e2e.providers import anthropic_client, received, script

MODEL = "claude-3-5-haiku-latest"
HELLO = [{"role": "user", "content": "Say hello."}]
TOOLS = [
    {
        "name": "get_weather",
        "description": "The weather in a city.",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
]


def raw(gov: Services, path: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(gov.edges["edge"].base_url + path, json=body, headers=headers, timeout=30)


def test_a_message_is_the_providers_answer_unchanged(gov: Services, byok: dict[str, str]) -> None:
    script(gov, "anthropic", reply="Hello there.", prompt_tokens=12, completion_tokens=3)
    with anthropic_client(gov, byok["key"]) as c:
        message = c.messages.create(
            model=MODEL,
            max_tokens=100,
            messages=HELLO,
            system="Be brief.",
            stop_sequences=["END"],
            metadata={"user_id": "user-1234"},
        )
    assert message.content[0].type == "text" and message.content[0].text == "Hello there."
    assert (message.usage.input_tokens, message.usage.output_tokens) == (12, 3)
    (sent,) = received(gov, "anthropic")
    # The body as sent (model mapped); the organization's key, not the client's.
    assert sent["body"] == {
        "model": MODEL,
        "max_tokens": 100,
        "messages": HELLO,
        "system": "Be brief.",
        "stop_sequences": ["END"],
        "metadata": {"user_id": "user-1234"},
    }
    assert sent["headers"]["x-api-key"] == byok["anthropic"]
    # The SDK's own version header, passed on as sent.
    assert sent["headers"]["anthropic-version"] == anthropic_version(gov, byok["key"])
    ours = raw(gov, "/messages", sent["body"], **{"x-api-key": byok["key"]})
    theirs = httpx.post(
        gov.fakes["anthropic"] + "/v1/messages",
        json=sent["body"],
        headers={"x-api-key": byok["anthropic"], "anthropic-version": "2023-06-01"},
    )
    assert ours.json() == theirs.json()
    row = gov.ledger(byok["org"])[-1]
    assert (row["endpoint"], row["provider"], row["model"]) == (
        "/v1/messages",
        "anthropic",
        "anthropic/" + MODEL,
    )
    assert (row["prompt_tokens"], row["completion_tokens"], row["status"]) == (12, 3, "ok")


def test_a_stream_comes_back_event_by_event(gov: Services, byok: dict[str, str]) -> None:
    script(gov, "anthropic", chunks=["Hel", "lo", "!"], prompt_tokens=12, completion_tokens=3)
    with (
        anthropic_client(gov, byok["key"]) as c,
        c.messages.stream(model=MODEL, max_tokens=50, messages=HELLO) as stream,  # type: ignore[arg-type]
    ):
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert texts == ["Hel", "lo", "!"]
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 3
    # The raw stream equals the stand-in's, event for event.
    body = {"model": MODEL, "max_tokens": 50, "messages": HELLO, "stream": True}
    ours = raw(gov, "/messages", body, **{"x-api-key": byok["key"]}).text
    theirs = httpx.post(
        gov.fakes["anthropic"] + "/v1/messages",
        json=body,
        headers={"x-api-key": byok["anthropic"], "anthropic-version": "2023-06-01"},
    ).text
    assert events(ours) == events(theirs)
    rows = gov.ledger(byok["org"])
    assert [(r["completion_tokens"], r["status"]) for r in rows] == [(3, "ok"), (3, "ok")]


def anthropic_version(gov: Services, key: str) -> str:
    """The anthropic-version header this SDK sends."""
    with anthropic_client(gov, key) as c:
        return str(c.default_headers["anthropic-version"])


def events(text: str) -> list[tuple[str, Any]]:
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n") if ": " in line)
        out.append((lines.get("event", ""), json.loads(lines["data"])))
    return out


def test_tools_streamed_and_not(gov: Services, byok: dict[str, str]) -> None:
    calls = [{"name": "get_weather", "arguments": '{"city": "Paris"}'}]
    script(gov, "anthropic", tool_calls=calls, reply="Checking.")
    question = [{"role": "user", "content": "Weather in Paris?"}]
    with anthropic_client(gov, byok["key"]) as c:
        message = c.messages.create(model=MODEL, max_tokens=100, messages=question, tools=TOOLS)  # type: ignore[arg-type]
        with c.messages.stream(
            model=MODEL,
            max_tokens=100,
            messages=question,
            tools=TOOLS,  # type: ignore[arg-type]
        ) as stream:
            streamed = stream.get_final_message()
        for m in (message, streamed):
            assert m.stop_reason == "tool_use"
            use = next(b for b in m.content if b.type == "tool_use")
            assert (use.name, use.input) == ("get_weather", {"city": "Paris"})
        use = next(b for b in message.content if b.type == "tool_use")
        answer = c.messages.create(
            model=MODEL,
            max_tokens=100,
            tools=TOOLS,  # type: ignore[arg-type]
            messages=[
                *question,  # type: ignore[list-item]
                {"role": "assistant", "content": [b.model_dump() for b in message.content]},
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "21 C"}],
                },
            ],
        )
    assert answer.content[0].type == "text" and answer.content[0].text == "Checking."
    assert received(gov, "anthropic")[0]["body"]["tools"] == TOOLS


def test_bearer_keys_prefixed_models_and_headers_passed_on(
    gov: Services, byok: dict[str, str]
) -> None:
    script(gov, "anthropic", reply="ok")
    body = {"model": "anthropic/" + MODEL, "max_tokens": 10, "messages": HELLO}
    resp = raw(
        gov,
        "/messages",
        body,
        authorization=f"Bearer {byok['key']}",
        **{"anthropic-version": "2023-06-01", "anthropic-beta": "prompt-caching-2024-07-31"},
    )
    assert resp.status_code == 200, resp.text
    (sent,) = received(gov, "anthropic")
    assert sent["body"]["model"] == MODEL
    assert sent["headers"]["anthropic-beta"] == "prompt-caching-2024-07-31"
    assert "authorization" not in sent["headers"]


def test_count_tokens(gov: Services, byok: dict[str, str]) -> None:
    script(gov, "anthropic", prompt_tokens=17)
    with anthropic_client(gov, byok["key"]) as c:
        count = c.messages.count_tokens(model=MODEL, messages=HELLO)  # type: ignore[arg-type]
    assert count.input_tokens == 17
    (sent,) = received(gov, "anthropic")
    assert sent["path"] == "/v1/messages/count_tokens"
    (row,) = gov.ledger(byok["org"])
    assert (row["endpoint"], row["prompt_tokens"], row["completion_tokens"]) == (
        "/v1/messages/count_tokens",
        0,
        0,
    )


def test_errors_are_in_anthropics_shape(gov: Services, byok: dict[str, str]) -> None:
    script(gov, "anthropic")
    with (
        anthropic_client(gov, "sk-sluice-not-a-real-key") as c,
        pytest.raises(anthropic.AuthenticationError) as auth_err,
    ):
        c.messages.create(model=MODEL, max_tokens=10, messages=HELLO)  # type: ignore[arg-type]
    assert auth_err.value.body["type"] == "error"  # type: ignore[index]
    assert auth_err.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    with anthropic_client(gov, byok["key"]) as c:
        with pytest.raises(anthropic.BadRequestError) as bad:
            c.messages.create(model="smollm2-135m-instruct", max_tokens=10, messages=HELLO)  # type: ignore[arg-type]
        assert "not an Anthropic model" in str(bad.value)
        with pytest.raises(anthropic.BadRequestError):
            c.messages.create(model=MODEL, max_tokens=0, messages=HELLO)  # type: ignore[arg-type]
    resp = raw(gov, "/messages", {"model": MODEL}, **{"x-api-key": byok["key"]})
    assert resp.status_code == 400
    assert resp.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": resp.json()["error"]["message"]},
    }
    resp = raw(gov, "/messages", [], **{"x-api-key": byok["key"]})  # type: ignore[arg-type]
    assert resp.json()["type"] == "error"
    unknown = httpx.get(gov.edges["edge"].base_url + "/messages/nope")
    assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "not_found_error"
    # The provider refusing the organization's credential is not the client's key.
    script(gov, "anthropic", expected_key="sk-ant-some-other")
    with (
        anthropic_client(gov, byok["key"]) as c,
        pytest.raises(anthropic.APIStatusError) as upstream,
    ):
        c.messages.create(model=MODEL, max_tokens=10, messages=HELLO)  # type: ignore[arg-type]
    assert upstream.value.status_code == 502
    assert byok["anthropic"] not in str(upstream.value.body)


def test_a_rate_limited_key_is_refused_before_the_provider(
    gov: Services, byok: dict[str, str]
) -> None:
    script(gov, "anthropic", reply="ok")
    limited = gov.new_key(byok["org"], "rpm1", "--rpm", "1")
    with anthropic_client(gov, limited) as c:
        c.messages.create(model=MODEL, max_tokens=10, messages=HELLO)  # type: ignore[arg-type]
        with pytest.raises(anthropic.RateLimitError) as err:
            c.messages.create(model=MODEL, max_tokens=10, messages=HELLO)  # type: ignore[arg-type]
    assert err.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert err.value.response.headers["retry-after"]
    assert len(received(gov, "anthropic")) == 1
