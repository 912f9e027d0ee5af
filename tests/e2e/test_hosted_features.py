"""The bundled hosted model through the running stack with the official `openai` SDK: structured
outputs and tool calls by constrained decoding, logprobs, n, penalties and logit_bias, and
LangChain's structured output and tools against it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import jsonschema
import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from pydantic import BaseModel, Field

from bench.config import MODEL_FOLDER
from tests.e2e.processes import Services
from tests.engine.test_generation import PROMPTS, SCHEMAS

MODEL = "smollm2-135m-instruct"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 30},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Adds two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def key(gov: Services) -> str:
    return gov.new_key("hosted-features", "features")


@pytest.fixture
def client(gov: Services, key: str) -> Any:
    with OpenAI(base_url=gov.edges["edge"].base_url, api_key=key, max_retries=0) as c:
        yield c


class City(BaseModel):
    # Bounded values: a 135M model may otherwise loop inside a string or a number's digits
    # until max_tokens.
    name: str = Field(max_length=30)
    country: str = Field(max_length=30)
    population_millions: int = Field(ge=0, le=100)


def test_parse_returns_a_parsed_object(client: OpenAI) -> None:
    resp = client.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe Paris as JSON."}],
        response_format=City,
        max_tokens=120,
        temperature=0,
    )
    parsed = resp.choices[0].message.parsed
    assert isinstance(parsed, City)
    assert resp.choices[0].finish_reason == "stop"


def test_fifty_schemas_at_temperature_one_all_validate(gov: Services, key: str) -> None:
    async def one(c: AsyncOpenAI, i: int) -> tuple[dict[str, Any], str, str]:
        schema = SCHEMAS[i % len(SCHEMAS)]
        resp = await c.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": f"s{i}", "schema": schema, "strict": True},
            },
            temperature=1.0,
            seed=i,
            max_tokens=300,
        )
        choice = resp.choices[0]
        return schema, choice.message.content or "", choice.finish_reason

    async def main() -> list[tuple[dict[str, Any], str, str]]:
        async with AsyncOpenAI(
            base_url=gov.edges["edge"].base_url, api_key=key, max_retries=0, timeout=300
        ) as c:
            sem = asyncio.Semaphore(8)

            async def bounded(i: int) -> tuple[dict[str, Any], str, str]:
                async with sem:
                    return await one(c, i)

            return await asyncio.gather(*(bounded(i) for i in range(50)))

    results = asyncio.run(main())
    assert len({json.dumps(s, sort_keys=True) for s, _, _ in results}) >= 8
    for schema, text, finish in results:
        assert finish == "stop", text
        jsonschema.validate(json.loads(text), schema)


def test_json_object_parses_whenever_it_finishes(client: OpenAI) -> None:
    finished = 0
    for seed in range(6):
        resp = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Give me a JSON object about a cat."}],
            response_format={"type": "json_object"},
            temperature=1.0,
            seed=seed,
            max_tokens=120,
        )
        text = resp.choices[0].message.content or ""
        assert text.startswith("{")
        if resp.choices[0].finish_reason == "stop":
            finished += 1
            assert isinstance(json.loads(text), dict)
        else:
            # Cut by max_tokens, as OpenAI's JSON mode can be: a valid prefix of an object.
            assert resp.choices[0].finish_reason == "length"
    assert finished


def calls_of(message: Any) -> list[tuple[str, dict[str, Any]]]:
    return [(t.function.name, json.loads(t.function.arguments)) for t in message.tool_calls or ()]


def test_required_and_named_tool_choices_give_valid_calls(client: OpenAI) -> None:
    for choice, name in (
        ("required", None),
        ({"type": "function", "function": {"name": "add"}}, "add"),
    ):  # noqa: E501
        resp = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "What is 21 plus 21?"}],
            tools=[WEATHER, ADD],  # type: ignore[list-item]
            tool_choice=choice,  # type: ignore[arg-type]
            parallel_tool_calls=False,
            temperature=1.0,
            seed=3,
            max_tokens=80,
        )
        message = resp.choices[0].message
        calls = calls_of(message)
        assert len(calls) == 1 and (name is None or calls[0][0] == name)
        tool = WEATHER if calls[0][0] == "get_weather" else ADD
        jsonschema.validate(calls[0][1], tool["function"]["parameters"])  # type: ignore[index]
        assert message.tool_calls and message.tool_calls[0].id.startswith("call_")
        # OpenAI finishes a named choice with "stop", an open one with "tool_calls".
        assert resp.choices[0].finish_reason == ("stop" if name else "tool_calls")


def test_auto_gives_text_or_a_valid_call(client: OpenAI) -> None:
    kinds = set()
    for seed, question in enumerate(["What is the weather in Paris?", "Tell me a joke."] * 2):
        resp = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": question}],
            tools=[WEATHER],  # type: ignore[list-item]
            temperature=1.0,
            seed=seed,
            max_tokens=60,
        )
        message = resp.choices[0].message
        if message.tool_calls:
            kinds.add("call")
            for name, args in calls_of(message):
                assert name == "get_weather"
                jsonschema.validate(args, WEATHER["function"]["parameters"])  # type: ignore[index]
        else:
            kinds.add("text")
            assert message.content and not message.content.startswith("<tool_call>")
    assert kinds


def test_streamed_tool_calls_assemble_to_the_whole_answer(client: OpenAI) -> None:
    # One call: left free to call again, this small model repeats its call until max_tokens.
    args: dict[str, Any] = dict(
        model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required", temperature=0,
        max_tokens=80, parallel_tool_calls=False,
    )  # fmt: skip
    whole = client.chat.completions.create(**args)
    chunks = list(client.chat.completions.create(**args, stream=True))
    firsts = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or () if d.id]
    assert [(d.index, d.type, d.function.name) for d in firsts] == [  # type: ignore[union-attr]
        (i, "function", name) for i, (name, _) in enumerate(calls_of(whole.choices[0].message))
    ]
    with client.chat.completions.stream(**args) as stream:
        final = stream.get_final_completion()
    assert calls_of(final.choices[0].message) == calls_of(whole.choices[0].message)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert whole.choices[0].finish_reason == "tool_calls"


def test_a_tool_round_trip_is_rendered_and_answered(client: OpenAI) -> None:
    first = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required", temperature=0,  # type: ignore[arg-type, list-item]
        max_tokens=80, parallel_tool_calls=False,
    )  # fmt: skip
    message = first.choices[0].message
    history = [
        *ASK,
        message.model_dump(exclude_none=True),
        *(
            {"role": "tool", "tool_call_id": t.id, "content": "Sunny, 21 degrees celsius."}
            for t in message.tool_calls or ()
        ),
    ]
    answer = client.chat.completions.create(
        model=MODEL, messages=history, tools=[WEATHER], tool_choice="none", temperature=0,  # type: ignore[arg-type, list-item]
        max_tokens=60,
    )  # fmt: skip
    assert answer.choices[0].message.content and not answer.choices[0].message.tool_calls
    assert answer.usage is not None and answer.usage.prompt_tokens > first.usage.prompt_tokens  # type: ignore[union-attr]


def test_logprobs_whole_and_streamed(client: OpenAI) -> None:
    ask = dict(model=MODEL, messages=ASK, logprobs=True, top_logprobs=5, max_tokens=12)
    greedy = client.chat.completions.create(**ask, temperature=0)  # type: ignore[arg-type]
    entries = greedy.choices[0].logprobs.content  # type: ignore[union-attr]
    ended = greedy.choices[0].finish_reason == "stop"  # the end token has no entry
    assert greedy.usage is not None and len(entries) == greedy.usage.completion_tokens - ended  # type: ignore[arg-type]
    assert "".join(e.token for e in entries) == greedy.choices[0].message.content  # type: ignore[union-attr]
    for e in entries:  # type: ignore[union-attr]
        assert len(e.top_logprobs) == 5
        assert e.top_logprobs[0].token == e.token  # greedy picks the most likely token
        assert e.top_logprobs[0].logprob == e.logprob and e.bytes == list(e.token.encode())
    sampled = client.chat.completions.create(**ask, temperature=1.0, seed=5)  # type: ignore[arg-type]
    for e in sampled.choices[0].logprobs.content:  # type: ignore[union-attr]
        tops = {t.token: t.logprob for t in e.top_logprobs}
        if e.token in tops:
            assert tops[e.token] == e.logprob
    streamed = [
        e
        for c in client.chat.completions.create(**ask, temperature=0, stream=True)  # type: ignore[arg-type]
        if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content or ()
    ]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in entries]  # type: ignore[union-attr]


def test_n_choices_seeded_and_greedy(client: OpenAI, gov: Services) -> None:
    ask: dict[str, Any] = dict(
        model=MODEL, messages=[{"role": "user", "content": "Name a color."}], max_tokens=6,
        logprobs=True,
    )  # fmt: skip
    first = client.chat.completions.create(**ask, n=4, temperature=1.0, seed=11)
    again = client.chat.completions.create(**ask, n=4, temperature=1.0, seed=11)
    assert [c.index for c in first.choices] == [0, 1, 2, 3]
    texts = [c.message.content for c in first.choices]
    assert texts == [c.message.content for c in again.choices]
    assert len(set(texts)) > 1  # each choice samples on its own
    per_choice = [
        len(c.logprobs.content) + (c.finish_reason == "stop")  # type: ignore[union-attr, arg-type]
        for c in first.choices
    ]
    assert first.usage is not None and first.usage.completion_tokens == sum(per_choice)
    greedy = client.chat.completions.create(**ask, n=2, temperature=0)
    assert greedy.choices[0].message.content == greedy.choices[1].message.content
    streamed = list(client.chat.completions.create(**ask, n=2, temperature=0, stream=True))
    by_index: dict[int, str] = {}
    for c in streamed:
        for ch in c.choices:
            by_index[ch.index] = by_index.get(ch.index, "") + (ch.delta.content or "")
    assert by_index == {0: greedy.choices[0].message.content, 1: greedy.choices[1].message.content}
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(**ask, n=100)
    assert err.value.param == "n"


def token_ids(text: str) -> list[int]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(MODEL_FOLDER / "tokenizer.json"))
    return list(tok.encode(text, add_special_tokens=False).ids)


def test_logit_bias_and_penalties(client: OpenAI) -> None:
    ask: dict[str, Any] = dict(
        model=MODEL, messages=[{"role": "user", "content": "Write a story about a river."}],
        max_tokens=40, temperature=0,
    )  # fmt: skip
    plain = client.chat.completions.create(**ask).choices[0].message.content or ""
    (banned,) = token_ids(plain.split()[0])[:1]
    banned_text = client.chat.completions.create(
        **ask, logit_bias={str(banned): -100}, logprobs=True
    )
    tokens = [e.token for e in banned_text.choices[0].logprobs.content]  # type: ignore[union-attr]
    assert token_ids(plain.split()[0])[0] not in [token_ids(t)[0] for t in tokens if t.strip()]
    (only,) = token_ids(" river")
    forced = client.chat.completions.create(
        **{**ask, "temperature": 1.0, "max_tokens": 8}, logit_bias={str(only): 100}, seed=1
    )
    assert forced.choices[0].message.content == " river" * 8
    # A frequency penalty makes a looping greedy story repeat itself less.
    long = {**ask, "max_tokens": 120}
    base = client.chat.completions.create(**long).choices[0].message.content or ""
    penalised = (
        client.chat.completions.create(**long, frequency_penalty=2.0).choices[0].message.content
        or ""
    )
    assert len(set(token_ids(penalised))) > len(set(token_ids(base)))
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(**ask, presence_penalty=3)
    assert err.value.param == "presence_penalty"


def test_legacy_completions_logprobs(client: OpenAI) -> None:
    resp = client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=5, temperature=0, logprobs=2
    )
    lp = resp.choices[0].logprobs
    assert lp is not None and lp.tokens and len(lp.tokens) == len(lp.token_logprobs or [])
    assert "".join(lp.tokens) == resp.choices[0].text
    assert lp.text_offset and lp.text_offset[0] == len("The capital of France is")
    assert all(len(t) == 2 for t in lp.top_logprobs or [])


def test_langchain_structured_output_and_tools(gov: Services, key: str) -> None:
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        model=MODEL, base_url=gov.edges["edge"].base_url, api_key=key, temperature=0,  # type: ignore[arg-type]
        max_tokens=120, max_retries=0,
    )  # fmt: skip
    structured = llm.with_structured_output(City, method="json_schema")
    city = structured.invoke("Describe Paris.")
    assert isinstance(city, City)

    @tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        return f"Sunny in {city}"

    bound = llm.bind_tools([get_weather], tool_choice="required", parallel_tool_calls=False)
    message = bound.invoke("What is the weather in Paris?")
    assert message.tool_calls and message.tool_calls[0]["name"] == "get_weather"  # type: ignore[attr-defined]
    assert isinstance(message.tool_calls[0]["args"]["city"], str)  # type: ignore[attr-defined]
