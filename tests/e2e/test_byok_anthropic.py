"""OpenAI chat requests for `anthropic/<model>` through the running stack: tool calls streamed and
not, a tool-result round trip, images and structured output, translated to Anthropic's Messages
API and back (the stand-in validates the translated body as the real API would)."""

from __future__ import annotations

import json

import openai
import pytest

from tests.e2e.processes import Services
from tests.e2e.providers import CLAUDE, client, received, script

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
            },
        },
    }
]
CALLS = [
    {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    {"name": "get_weather", "arguments": '{"city": "Tokyo"}'},
]
# A 1x1 PNG.
PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8/5+hHgAHggJ/"
    "PchI7wAAAABJRU5ErkJggg=="
)
QUESTION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris and Tokyo?"},
]


def test_a_tool_call_is_translated_both_ways(gov: Services, byok: dict[str, str]) -> None:
    script(gov, "anthropic", tool_calls=CALLS, reply="Let me check.", prompt_tokens=30)
    with client(gov, byok["key"]) as c:
        resp = c.chat.completions.create(
            model=CLAUDE,
            messages=QUESTION,  # type: ignore[arg-type]
            tools=TOOLS,  # type: ignore[arg-type]
            tool_choice="required",
            parallel_tool_calls=False,
            max_tokens=200,
            temperature=0.5,
        )
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check."
    calls = choice.message.tool_calls or []
    assert [(t.function.name, json.loads(t.function.arguments)) for t in calls] == [  # type: ignore[union-attr]
        ("get_weather", {"city": "Paris"}),
        ("get_weather", {"city": "Tokyo"}),
    ]
    assert all(t.id.startswith("toolu_") and t.type == "function" for t in calls)
    (sent,) = received(gov, "anthropic")
    body = sent["body"]
    assert sent["path"] == "/v1/messages" and sent["headers"]["anthropic-version"]
    assert body["model"] == "claude-3-5-haiku-latest"
    assert body["system"] == "Be brief."
    assert body["messages"] == [{"role": "user", "content": "Weather in Paris and Tokyo?"}]
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "The weather in a city.",
            "input_schema": TOOLS[0]["function"]["parameters"],  # type: ignore[index]
        }
    ]
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert (body["max_tokens"], body["temperature"]) == (200, 0.5)
    assert "stream" not in body or body["stream"] is False
    (row,) = gov.ledger(byok["org"])
    assert (row["provider"], row["model"], row["prompt_tokens"]) == ("anthropic", CLAUDE, 30)


def test_streamed_tool_calls_assemble_like_the_whole_answer(
    gov: Services, byok: dict[str, str]
) -> None:
    script(gov, "anthropic", tool_calls=CALLS, prompt_tokens=30)
    with client(gov, byok["key"]) as c:
        whole = c.chat.completions.create(model=CLAUDE, messages=QUESTION, tools=TOOLS)  # type: ignore[arg-type]
        chunks = list(
            c.chat.completions.create(
                model=CLAUDE,
                messages=QUESTION,  # type: ignore[arg-type]
                tools=TOOLS,  # type: ignore[arg-type]
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        with c.chat.completions.stream(model=CLAUDE, messages=QUESTION, tools=TOOLS) as s:  # type: ignore[arg-type]
            final = s.get_final_completion()
    deltas = [d for ch in chunks if ch.choices for d in ch.choices[0].delta.tool_calls or ()]
    firsts = [d for d in deltas if d.id]
    assert [(d.index, d.function.name) for d in firsts] == [(0, "get_weather"), (1, "get_weather")]  # type: ignore[union-attr]
    assert all(d.type == "function" for d in firsts)
    args = {i: "".join(d.function.arguments or "" for d in deltas if d.index == i) for i in (0, 1)}  # type: ignore[union-attr]
    expected = whole.choices[0].message.tool_calls or []
    assert [json.loads(args[i]) for i in (0, 1)] == [
        json.loads(t.function.arguments)
        for t in expected  # type: ignore[union-attr]
    ]
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices]
    assert finishes[-1] == "tool_calls"
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 30
    assembled = final.choices[0].message.tool_calls or []
    assert [t.function.arguments for t in assembled] == [  # type: ignore[union-attr]
        t.function.arguments  # type: ignore[union-attr]
        for t in expected
    ]
    assert received(gov, "anthropic")[1]["body"]["stream"] is True


def test_a_tool_result_round_trip(gov: Services, byok: dict[str, str]) -> None:
    script(gov, "anthropic", tool_calls=CALLS, reply="Sunny in Paris, rain in Tokyo.")
    with client(gov, byok["key"]) as c:
        first = c.chat.completions.create(model=CLAUDE, messages=QUESTION, tools=TOOLS)  # type: ignore[arg-type]
        message = first.choices[0].message
        calls = message.tool_calls or []
        history = [
            *QUESTION,
            message.model_dump(exclude_none=True),
            *(
                {"role": "tool", "tool_call_id": t.id, "content": f"result {i}"}
                for i, t in enumerate(calls)
            ),
            {"role": "user", "content": "Thanks; summarise."},
        ]
        answer = c.chat.completions.create(model=CLAUDE, messages=history, tools=TOOLS)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == "Sunny in Paris, rain in Tokyo."
    assert answer.choices[0].finish_reason == "stop"
    turns = received(gov, "anthropic")[1]["body"]["messages"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]
    uses = [b for b in turns[1]["content"] if b["type"] == "tool_use"]
    assert [(u["id"], u["name"], u["input"]) for u in uses] == [
        (t.id, "get_weather", json.loads(t.function.arguments))  # type: ignore[union-attr]
        for t in calls
    ]
    # Consecutive tool results are one user turn, results first, then the user's text.
    results = turns[2]["content"]
    assert [b["type"] for b in results] == ["tool_result", "tool_result", "text"]
    assert [b["tool_use_id"] for b in results[:2]] == [t.id for t in calls]
    assert results[2]["text"] == "Thanks; summarise."


def test_a_data_url_image_arrives_as_a_base64_block(gov: Services, byok: dict[str, str]) -> None:
    script(gov, "anthropic", reply="A pixel.")
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]
    with client(gov, byok["key"]) as c:
        resp = c.chat.completions.create(
            model=CLAUDE,
            messages=[{"role": "user", "content": content}],  # type: ignore[misc, list-item]
        )
    assert resp.choices[0].message.content == "A pixel."
    (sent,) = received(gov, "anthropic")
    blocks = sent["body"]["messages"][0]["content"]
    assert blocks == [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


def test_json_object_comes_back_as_json_content(gov: Services, byok: dict[str, str]) -> None:
    script(gov, "anthropic", reply='{"city": "Paris"}')
    with client(gov, byok["key"]) as c:
        resp = c.chat.completions.create(
            model=CLAUDE,
            messages=[{"role": "user", "content": "Paris as JSON"}],
            response_format={"type": "json_object"},
        )
    assert json.loads(resp.choices[0].message.content or "") == {"city": "Paris"}
    assert resp.choices[0].finish_reason == "stop"


def test_fields_anthropic_cannot_express_are_refused_naming_them(
    gov: Services, byok: dict[str, str]
) -> None:
    script(gov, "anthropic")
    with client(gov, byok["key"]) as c:
        for extra, param in (
            ({"n": 2}, "n"),
            ({"logprobs": True}, "logprobs"),
            ({"seed": 1}, "seed"),
        ):
            with pytest.raises(openai.BadRequestError) as err:
                c.chat.completions.create(model=CLAUDE, messages=QUESTION, **extra)  # type: ignore[arg-type]
            assert err.value.param == param
    assert received(gov, "anthropic") == []
