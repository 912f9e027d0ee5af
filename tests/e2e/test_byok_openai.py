"""Bring-your-own-key OpenAI through the running stack, with the official `openai` SDK and raw
HTTP: requests forwarded whole, answers and streams relayed unchanged but for the documented
edits, tools, structured outputs, images and embeddings, all on the organization's ledger."""

from __future__ import annotations

import copy
import json
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel

from tests.e2e.processes import Services
from tests.e2e.providers import GPT, client, received, script

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
                "additionalProperties": False,
            },
            "strict": True,
        },
    }
]
# A 1x1 PNG.
PNG = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8/5+hHgAHggJ/"
    "PchI7wAAAABJRU5ErkJggg=="
)
# A request carrying every field of the chat API that a client may send (and one from the
# future that no version of Sluice knows): all of it must reach the provider as sent.
EVERYTHING: dict[str, Any] = {
    "model": GPT,
    "messages": [
        {"role": "developer", "content": "Answer in JSON."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture, and the weather?"},
                {"type": "image_url", "image_url": {"url": PNG, "detail": "low"}},
                {
                    "type": "input_audio",
                    "input_audio": {"data": "UklGRiQAAABXQVZF", "format": "wav"},
                },
            ],
            "name": "ada",
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_abc",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_abc", "content": "Sunny, 21 C"},
    ],
    "tools": TOOLS,
    "tool_choice": "auto",
    "parallel_tool_calls": False,
    "response_format": {
        "type": "json_schema",
        "json_schema": {
            "name": "answer",
            "schema": {
                "type": "object",
                "properties": {"summary": {"type": "string"}},
                "required": ["summary"],
                "additionalProperties": False,
            },
            "strict": True,
        },
    },
    "logprobs": True,
    "top_logprobs": 3,
    "n": 2,
    "presence_penalty": 0.5,
    "frequency_penalty": -0.25,
    "logit_bias": {"50256": -100},
    "seed": 7,
    "user": "user-1234",
    "metadata": {"team": "search"},
    "store": True,
    "reasoning_effort": "low",
    "max_completion_tokens": 64,
    "prediction": {"type": "content", "content": '{"summary": "'},
    "modalities": ["text"],
    "temperature": 0.3,
    "top_p": 0.9,
    "stop": ["END"],
    "service_tier": "auto",
    "a_field_from_next_month": {"nested": [1, 2.5, None, True, "ü"]},
}


def normalized(value: Any) -> Any:
    """`value` with what differs between two answers to one request (ids, times) blanked."""
    if isinstance(value, dict):
        return {k: "*" if k in ("id", "created") else normalized(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalized(v) for v in value]
    return value


def sse_chunks(text: str) -> list[Any]:
    """The data of each event of an SSE body, JSON-decoded (the final "[DONE]" as is)."""
    out: list[Any] = []
    for block in text.split("\n\n"):
        data = [line[6:] for line in block.split("\n") if line.startswith("data: ")]
        if data:
            joined = "\n".join(data)
            out.append(joined if joined == "[DONE]" else json.loads(joined))
    return out


def via_sluice(gov: Services, key: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        gov.edges["edge"].base_url + "/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )


def direct(gov: Services, secret: str, body: dict[str, Any]) -> httpx.Response:
    """The same request straight to the stand-in, as the provider would answer it."""
    return httpx.post(
        gov.fakes["openai"] + "/v1/chat/completions",
        json={**body, "model": body["model"].removeprefix("openai/")},
        headers={"authorization": f"Bearer {secret}"},
        timeout=30,
    )


def with_model(answer: Any, model: str) -> Any:
    if isinstance(answer, dict):
        return {**answer, "model": model}
    return answer


def test_a_request_with_every_field_is_forwarded_whole(gov: Services, byok: dict[str, str]) -> None:
    script(gov, "openai", reply='{"summary": "A pixel; sunny in Paris."}', prompt_tokens=40)
    resp = via_sluice(gov, byok["key"], EVERYTHING)
    assert resp.status_code == 200, resp.text
    (sent,) = received(gov, "openai")
    assert sent["body"] == {**EVERYTHING, "model": "gpt-4o-mini"}
    # The answer is the provider's, whole, with the model named as Sluice serves it.
    expected = direct(gov, byok["openai"], EVERYTHING).json()
    answer = resp.json()
    assert answer["model"] == "openai/" + expected["model"]
    assert normalized(answer) == normalized(with_model(expected, answer["model"]))
    assert len(answer["choices"]) == 2 and answer["choices"][1]["logprobs"]["content"]
    assert resp.headers["x-request-id"].startswith("req-")


@pytest.mark.parametrize("client_usage", [False, True])
def test_a_stream_is_relayed_chunk_by_chunk_in_the_providers_shape(
    gov: Services, byok: dict[str, str], client_usage: bool
) -> None:
    script(gov, "openai", chunks=['{"summary": ', '"sunny"', "}"], prompt_tokens=40)
    body = {**EVERYTHING, "stream": True}
    if client_usage:
        body["stream_options"] = {"include_usage": True}
    resp = via_sluice(gov, byok["key"], body)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/event-stream")
    (sent,) = received(gov, "openai")
    # Usage is always asked for (billing uses the provider's numbers); nothing else changes.
    assert sent["body"] == {
        **body,
        "model": "gpt-4o-mini",
        "stream_options": {"include_usage": True},
    }
    got = sse_chunks(resp.text)
    expected = sse_chunks(direct(gov, byok["openai"], body).text)
    assert got[-1] == expected[-1] == "[DONE]"
    model = got[0]["model"]
    assert model.startswith("openai/gpt-4o-mini")
    assert normalized(got) == normalized([with_model(c, model) for c in expected])
    assert any(c != "[DONE]" and c.get("usage") for c in got) is client_usage
    row = next(r for r in gov.ledger(byok["org"]) if r["status"] == "ok")
    assert (row["prompt_tokens"], row["endpoint"], row["provider"]) == (
        40,
        "/v1/chat/completions",
        "openai",
    )


CALLS = [
    {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    {"name": "get_weather", "arguments": '{"city": "Tokyo"}'},
]


def test_tool_calls_streamed_and_not_and_a_tool_round_trip(
    gov: Services, byok: dict[str, str]
) -> None:
    script(gov, "openai", tool_calls=CALLS, reply="Sunny in Paris, rain in Tokyo.")
    question = [{"role": "user", "content": "Weather in Paris and Tokyo?"}]
    with client(gov, byok["key"]) as c:
        resp = c.chat.completions.create(model=GPT, messages=question, tools=TOOLS)  # type: ignore[arg-type]
        choice = resp.choices[0]
        assert choice.finish_reason == "tool_calls"
        calls = choice.message.tool_calls or []
        assert [(t.function.name, json.loads(t.function.arguments)) for t in calls] == [  # type: ignore[union-attr]
            ("get_weather", {"city": "Paris"}),
            ("get_weather", {"city": "Tokyo"}),
        ]
        with c.chat.completions.stream(
            model=GPT,
            messages=question,
            tools=TOOLS,  # type: ignore[arg-type]
        ) as stream:
            final = stream.get_final_completion()
        streamed = final.choices[0].message.tool_calls or []
        assert [(t.function.name, t.function.arguments) for t in streamed] == [  # type: ignore[union-attr]
            (t["name"], t["arguments"]) for t in CALLS
        ]
        assert final.choices[0].finish_reason == "tool_calls"
        history = [
            *question,
            choice.message.model_dump(exclude_none=True),
            *(
                {"role": "tool", "tool_call_id": t.id, "content": f"sunny ({i})"}
                for i, t in enumerate(calls)
            ),
        ]
        answer = c.chat.completions.create(model=GPT, messages=history, tools=TOOLS)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == "Sunny in Paris, rain in Tokyo."
    assert answer.choices[0].finish_reason == "stop"
    last = received(gov, "openai")[-1]["body"]
    assert [m["role"] for m in last["messages"]] == ["user", "assistant", "tool", "tool"]
    assert last["messages"][1]["tool_calls"][0]["id"] == calls[0].id


class Weather(BaseModel):
    city: str
    temperature_c: int


def test_parse_with_a_pydantic_model(gov: Services, byok: dict[str, str]) -> None:
    script(gov, "openai", reply='{"city": "Paris", "temperature_c": 21}')
    with client(gov, byok["key"]) as c:
        resp = c.chat.completions.parse(
            model=GPT,
            messages=[{"role": "user", "content": "Weather in Paris as JSON."}],
            response_format=Weather,
        )
    assert resp.choices[0].message.parsed == Weather(city="Paris", temperature_c=21)
    (sent,) = received(gov, "openai")
    fmt = sent["body"]["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    assert fmt["json_schema"]["schema"]["required"] == ["city", "temperature_c"]


def test_an_image_part_reaches_the_provider_and_is_reserved_as_an_image(
    gov: Services, byok: dict[str, str]
) -> None:
    script(gov, "openai", reply="A single white pixel.", prompt_tokens=90)
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": PNG}},
    ]
    with client(gov, byok["key"]) as c:
        resp = c.chat.completions.create(
            model=GPT,
            messages=[{"role": "user", "content": content}],  # type: ignore[misc, list-item]
        )
    assert resp.choices[0].message.content == "A single white pixel."
    (sent,) = received(gov, "openai")
    assert sent["body"]["messages"][0]["content"] == content
    (row,) = gov.ledger(byok["org"])
    assert (row["prompt_tokens"], row["status"]) == (90, "ok")


def test_embeddings_are_governed_and_forwarded(gov: Services, byok: dict[str, str]) -> None:
    script(gov, "openai", prompt_tokens=5)
    with client(gov, byok["key"]) as c:
        # The SDK asks for base64 unless told otherwise, and decodes it.
        resp = c.embeddings.create(model="openai/text-embedding-3-small", input=["a", "bc"])
        floats = c.embeddings.create(
            model="openai/text-embedding-3-small",
            input="hello",
            encoding_format="float",
            dimensions=4,
        )
    assert [len(d.embedding) for d in resp.data] == [len(resp.data[0].embedding)] * 2
    assert all(isinstance(x, float) for x in resp.data[0].embedding)
    assert resp.model == "openai/text-embedding-3-small"
    assert len(floats.data[0].embedding) == 4
    sent = [r["body"] for r in received(gov, "openai")]
    assert sent[0]["model"] == "text-embedding-3-small" and sent[0]["input"] == ["a", "bc"]
    assert sent[1] == {
        "model": "text-embedding-3-small",
        "input": "hello",
        "encoding_format": "float",
        "dimensions": 4,
    }
    rows = gov.ledger(byok["org"])
    assert {(r["endpoint"], r["provider"], r["status"]) for r in rows} == {
        ("/v1/embeddings", "openai", "ok")
    }
    assert sum(int(r["prompt_tokens"]) for r in rows) == resp.usage.prompt_tokens + (
        floats.usage.prompt_tokens
    )
    assert all(int(r["completion_tokens"]) == 0 for r in rows)


def test_embeddings_refuse_models_that_have_none(gov: Services, byok: dict[str, str]) -> None:
    with client(gov, byok["key"]) as c:
        for model in ("smollm2-135m-instruct", "anthropic/claude-3-5-haiku-latest"):
            with pytest.raises(openai.BadRequestError) as err:
                c.embeddings.create(model=model, input="x")
            assert err.value.param == "model"
    assert received(gov, "openai") == []


def test_bad_bodies_are_refused_before_any_hop(gov: Services, byok: dict[str, str]) -> None:
    script(gov, "openai")
    for body, param in (
        ({"model": GPT}, "messages"),
        ({"model": GPT, "messages": [{"role": "user", "content": "x"}], "n": 0}, "n"),
        ({"model": GPT, "messages": "x"}, "messages"),
    ):
        resp = via_sluice(gov, byok["key"], copy.deepcopy(body))
        assert resp.status_code == 400
        assert resp.json()["error"]["param"] == param
    assert received(gov, "openai") == []
