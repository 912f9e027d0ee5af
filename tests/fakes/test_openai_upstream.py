"""The OpenAI stand-in speaks OpenAI's documented wire format: tool calls streamed and not, the
tool-loop rule, `n` choices, logprobs, embeddings (float and base64), models, and 400s for what
the real API refuses. Driven with httpx and with the official `openai` SDK."""

from __future__ import annotations

import base64
import json
import math
import struct
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel

from tests.fakes.harness import RunningFake
from tests.fakes.openai_upstream import openai_fake

KEY = "sk-proj-test0123456789"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CALLS = [
    {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'},
    {"name": "get_weather", "arguments": '{"city": "Rome", "unit": "celsius"}'},
]
ASK = [{"role": "user", "content": "Weather in Paris and Rome?"}]


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


def chat(http: httpx.Client, **body: Any) -> httpx.Response:
    return http.post("/chat/completions", json={"model": "gpt-4o-mini", **body})


def stream(http: httpx.Client, **body: Any) -> list[dict[str, Any]]:
    response = chat(http, stream=True, **body)
    assert response.status_code == 200, response.text
    lines = [line.removeprefix("data: ") for line in response.text.splitlines() if line]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_tool_calls_without_text(fake: RunningFake, http: httpx.Client) -> None:
    fake.script(reply="", tool_calls=CALLS, prompt_tokens=30)
    done = chat(http, messages=ASK, tools=[WEATHER]).json()
    [choice] = done["choices"]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] is None
    assert [(c["type"], c["function"]) for c in message["tool_calls"]] == [
        ("function", CALLS[0]),
        ("function", CALLS[1]),
    ]
    ids = [c["id"] for c in message["tool_calls"]]
    assert all(i.startswith("call_") and len(i) > 10 for i in ids) and len(set(ids)) == 2
    assert done["usage"]["prompt_tokens"] == 30


def test_tool_calls_after_text(fake: RunningFake, http: httpx.Client) -> None:
    fake.script(reply="Checking.", tool_calls=CALLS[:1])
    message = chat(http, messages=ASK, tools=[WEATHER]).json()["choices"][0]["message"]
    assert message["content"] == "Checking."
    assert message["tool_calls"][0]["function"] == CALLS[0]


def test_streamed_tool_calls(fake: RunningFake, http: httpx.Client) -> None:
    fake.script(reply="", tool_calls=CALLS)
    chunks = stream(http, messages=ASK, tools=[WEATHER], stream_options={"include_usage": True})
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[0] == {"role": "assistant", "content": None}
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    heads = [c for c in calls if "id" in c]
    assert [(h["index"], h["type"], h["function"]) for h in heads] == [
        (0, "function", {"name": "get_weather", "arguments": ""}),
        (1, "function", {"name": "get_weather", "arguments": ""}),
    ]
    for index, scripted in enumerate(CALLS):
        parts = [c["function"]["arguments"] for c in calls if c["index"] == index and "id" not in c]
        assert len(parts) > 1 and all(
            set(c) == {"index", "function"} for c in calls if "id" not in c
        )
        assert "".join(parts) == scripted["arguments"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0


def test_a_tool_result_is_answered_with_text(fake: RunningFake, http: httpx.Client) -> None:
    fake.script(reply="It is sunny in Paris.", tool_calls=CALLS[:1])
    history = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "call_1", "type": "function", "function": CALLS[0]}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    [choice] = chat(http, messages=history, tools=[WEATHER]).json()["choices"]
    assert (choice["message"]["content"], choice["finish_reason"]) == (
        "It is sunny in Paris.",
        "stop",
    )
    assert "tool_calls" not in choice["message"]
    chunks = stream(http, messages=history, tools=[WEATHER])
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "It is sunny in Paris."


def test_n_choices(fake: RunningFake, http: httpx.Client) -> None:
    fake.script(chunks=["a", "b"], prompt_tokens=5)
    done = chat(http, messages=ASK, n=3).json()
    assert [(c["index"], c["message"]["content"]) for c in done["choices"]] == [
        (0, "ab"),
        (1, "ab"),
        (2, "ab"),
    ]
    assert done["usage"]["completion_tokens"] == 6
    chunks = stream(http, messages=ASK, n=2, stream_options={"include_usage": True})
    by_choice: dict[int, str] = {}
    for c in chunks:
        for choice in c["choices"]:
            by_choice[choice["index"]] = by_choice.get(choice["index"], "") + (
                choice["delta"].get("content") or ""
            )
    assert by_choice == {0: "ab", 1: "ab"}
    assert chunks[-1]["usage"]["completion_tokens"] == 4


def test_logprobs(fake: RunningFake, http: httpx.Client) -> None:
    fake.script(chunks=["Hel", "lo"])
    choice = chat(http, messages=ASK, logprobs=True, top_logprobs=3).json()["choices"][0]
    entries = choice["logprobs"]["content"]
    assert [e["token"] for e in entries] == ["Hel", "lo"]
    assert entries[0]["bytes"] == list(b"Hel")
    assert all(len(e["top_logprobs"]) == 3 and e["logprob"] < 0 for e in entries)
    assert entries[0]["top_logprobs"][0]["token"] == "Hel"
    assert chat(http, messages=ASK).json()["choices"][0]["logprobs"] is None
    chunks = stream(http, messages=ASK, logprobs=True, top_logprobs=1)
    streamed = [
        c["choices"][0]["logprobs"] for c in chunks if c["choices"][0]["delta"].get("content")
    ]
    assert [lp["content"][0]["token"] for lp in streamed] == ["Hel", "lo"]
    assert all(
        len(lp["content"]) == 1 and len(lp["content"][0]["top_logprobs"]) == 1 for lp in streamed
    )


def _floats(encoded: str) -> list[float]:
    raw = base64.b64decode(encoded)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def test_embeddings_float_and_base64_agree(fake: RunningFake, http: httpx.Client) -> None:
    fake.script(prompt_tokens=4)
    body = {"model": "text-embedding-3-small", "input": ["cat", "dog"]}
    floats = http.post("/embeddings", json=body).json()
    encoded = http.post("/embeddings", json={**body, "encoding_format": "base64"}).json()
    assert floats["object"] == "list" and floats["model"] == "text-embedding-3-small"
    assert [d["index"] for d in floats["data"]] == [0, 1]
    assert floats["usage"] == {"prompt_tokens": 8, "total_tokens": 8}
    vectors = [d["embedding"] for d in floats["data"]]
    assert [_floats(d["embedding"]) for d in encoded["data"]] == vectors
    assert all(len(v) == 16 and math.isclose(math.hypot(*v), 1.0, rel_tol=1e-5) for v in vectors)
    assert vectors[0] != vectors[1]
    again = http.post("/embeddings", json={**body, "input": "cat"}).json()
    assert again["data"][0]["embedding"] == vectors[0]


@pytest.mark.parametrize("item", [[1, 2, 3], [[1, 2], [3]], "a string"])
def test_embedding_inputs_and_dimensions(http: httpx.Client, item: Any) -> None:
    done = http.post("/embeddings", json={"model": "m", "input": item, "dimensions": 5}).json()
    expected = len(item) if isinstance(item, list) and isinstance(item[0], list) else 1
    assert len(done["data"]) == expected and all(len(d["embedding"]) == 5 for d in done["data"])


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m"}, "input"),
        ({"input": "x"}, "model"),
        ({"model": "m", "input": ""}, "input"),
        ({"model": "m", "input": [[]]}, "input"),
        ({"model": "m", "input": "x", "dimensions": 0}, "dimensions"),
        ({"model": "m", "input": "x", "encoding_format": "int8"}, "encoding_format"),
    ],
)
def test_embeddings_refusals(
    fake: RunningFake, http: httpx.Client, body: dict[str, Any], param: str
) -> None:
    response = http.post("/embeddings", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert fake.requests()[-1]["outcome"] == "rejected"


def test_embeddings_share_the_key_check_and_failures(fake: RunningFake, http: httpx.Client) -> None:
    body = {"model": "m", "input": "x"}
    fake.script(expected_key="sk-other")
    assert http.post("/embeddings", json=body).json()["error"]["code"] == "invalid_api_key"
    fake.script(fail_next=1, fail_status=429, retry_after="2")
    limited = http.post("/embeddings", json=body)
    assert (limited.status_code, limited.headers["retry-after"]) == (429, "2")
    assert http.post("/embeddings", json=body).status_code == 200
    assert [r["outcome"] for r in fake.requests()] == ["rejected", "failed", "completed"]


def test_models(fake: RunningFake, http: httpx.Client) -> None:
    fake.script(models=["gpt-4o", "text-embedding-3-large"])
    listed = http.get("/models").json()
    assert [m["id"] for m in listed["data"]] == ["gpt-4o", "text-embedding-3-large"]
    assert listed["object"] == "list" and listed["data"][0]["object"] == "model"


CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": []}, "messages"),
        (
            {
                "messages": [
                    *ASK,
                    {"role": "assistant", "tool_calls": [CALL]},
                    {"role": "tool", "content": "x"},
                ]
            },
            "messages[2].tool_call_id",
        ),
        ({"messages": [*ASK, {"role": "assistant", "tool_calls": [CALL]}]}, "messages.[1].role"),
        (
            {
                "messages": [
                    *ASK,
                    {"role": "assistant", "tool_calls": [CALL, {**CALL, "id": "c2"}]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "x"},
                    {"role": "user", "content": "?"},
                ]
            },
            "messages.[1].role",
        ),
        (
            {"messages": [*ASK, {"role": "tool", "tool_call_id": "call_9", "content": "x"}]},
            "messages.[1].role",
        ),
        ({"messages": ASK, "stream_options": {"include_usage": True}}, "stream_options"),
        ({"messages": ASK, "top_logprobs": 2}, "top_logprobs"),
        ({"messages": ASK, "n": 0}, "n"),
        (
            {"messages": ASK, "tools": [{"type": "function", "function": {}}]},
            "tools[0].function.name",
        ),
        (
            {"messages": ASK, "response_format": {"type": "json_schema"}},
            "response_format.json_schema.name",
        ),
        ({"messages": ASK, "tool_choice": "required"}, "tool_choice"),
    ],
)
def test_chat_refusals(
    fake: RunningFake, http: httpx.Client, body: dict[str, Any], param: str
) -> None:
    response = chat(http, **body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert error["message"]
    assert fake.requests()[-1]["outcome"] == "rejected"


def test_unanswered_tool_call_ids_are_named(http: httpx.Client) -> None:
    body = {"messages": [*ASK, {"role": "assistant", "tool_calls": [CALL]}]}
    assert "call_1" in chat(http, **body).json()["error"]["message"]


# The official SDK parses what the stand-in sends.


def test_sdk_tool_calls(fake: RunningFake, client: openai.OpenAI) -> None:
    fake.script(reply="", tool_calls=CALLS)
    done = client.chat.completions.create(model="gpt-4o-mini", messages=ASK, tools=[WEATHER])
    calls = done.choices[0].message.tool_calls or []
    assert [json.loads(c.function.arguments)["city"] for c in calls] == ["Paris", "Rome"]


def test_sdk_streamed_tool_calls(fake: RunningFake, client: openai.OpenAI) -> None:
    fake.script(reply="Let me look.", tool_calls=CALLS)
    with client.chat.completions.stream(
        model="gpt-4o-mini",
        messages=ASK,
        tools=[WEATHER],
        stream_options={"include_usage": True},
    ) as events:
        final = events.get_final_completion()
    choice = final.choices[0]
    assert choice.message.content == "Let me look."
    assert choice.finish_reason == "tool_calls"
    assert [c.function.arguments for c in choice.message.tool_calls or []] == [
        c["arguments"] for c in CALLS
    ]
    assert final.usage is not None and final.usage.completion_tokens > 0


class Answer(BaseModel):
    city: str
    sunny: bool


def test_sdk_parse_with_a_pydantic_model(fake: RunningFake, client: openai.OpenAI) -> None:
    fake.script(reply='{"city": "Paris", "sunny": true}')
    done = client.chat.completions.parse(model="gpt-4o-mini", messages=ASK, response_format=Answer)
    assert done.choices[0].message.parsed == Answer(city="Paris", sunny=True)
    sent = fake.requests()[-1]["body"]["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["strict"] is True


def test_sdk_embeddings_default_to_base64(fake: RunningFake, client: openai.OpenAI) -> None:
    done = client.embeddings.create(model="text-embedding-3-small", input=["cat"], dimensions=8)
    assert fake.requests()[-1]["body"]["encoding_format"] == "base64"
    vector = done.data[0].embedding
    assert len(vector) == 8 and math.isclose(math.hypot(*vector), 1.0, rel_tol=1e-5)


def test_sdk_logprobs_and_n(fake: RunningFake, client: openai.OpenAI) -> None:
    fake.script(chunks=["x", "y"])
    done = client.chat.completions.create(
        model="gpt-4o-mini", messages=ASK, n=2, logprobs=True, top_logprobs=2
    )
    assert [c.index for c in done.choices] == [0, 1]
    content = done.choices[1].logprobs.content or []
    assert [t.token for t in content] == ["x", "y"] and len(content[0].top_logprobs) == 2


def test_sdk_sees_openai_errors(fake: RunningFake, client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[*ASK, {"role": "tool", "tool_call_id": "call_x", "content": "?"}],
        )
    assert info.value.param == "messages.[1].role"
    fake.script(fail_next=1, fail_status=429)
    with pytest.raises(openai.RateLimitError):
        client.embeddings.create(model="m", input="x")


def test_the_control_api_checks_scripted_tool_calls(fake: RunningFake) -> None:
    url = fake.url + "/_control/script"
    for bad in (
        [{"name": "f", "arguments": "not json"}],
        [{"arguments": "{}"}],
        [{"name": "f", "arguments": "[1]"}],
    ):
        assert httpx.post(url, json={"tool_calls": bad}).status_code == 400
    done = httpx.post(url, json={"tool_calls": [{"name": "now"}]})
    assert done.json()["tool_calls"] == [{"name": "now", "arguments": "{}"}]
