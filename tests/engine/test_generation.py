"""The Generator on the real model and the real scheduler: structured outputs, tools, logprobs,
n, penalties and logit_bias, as a caller of the Generate stream sees them."""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from services.common.errors import InvalidArgument
from services.engine.constraints import Grammars, json_grammar
from services.engine.generation import Generator, HostedModel, loop_dispatch
from services.engine.registry import ModelEntry, ModelRegistry, load_entry
from services.engine.runtime import DecoderRuntime
from services.engine.scheduler import Scheduler
from services.engine.text import TextCodec, TokenTable
from services.pb.engine.v1 import engine_pb2 as pb

MAX_BATCH = 16


@pytest.fixture(scope="module")
def entry(model_folder: Path) -> ModelEntry:
    return load_entry(model_folder, 2048)


@pytest.fixture(scope="module")
def runtime(model_folder: Path) -> DecoderRuntime:
    return DecoderRuntime(model_folder, max_batch=MAX_BATCH, max_len=2048)


@pytest.fixture(scope="module")
def codec(model_folder: Path) -> TextCodec:
    return TextCodec.from_folder(model_folder)


@dataclass
class Prepared:
    """Grammar tokenizer products, built once for the module (about 0.3 s)."""

    grammars: Grammars
    tokens: TokenTable


@pytest.fixture(scope="module")
def prepared(codec: TextCodec, runtime: DecoderRuntime) -> Prepared:
    tok = codec.grammar_tokenizer(runtime.spec.eos_token_ids)
    return Prepared(Grammars(tok), TokenTable.from_grammar_tokenizer(tok))


@pytest.fixture
async def generator(
    entry: ModelEntry, runtime: DecoderRuntime, codec: TextCodec, prepared: Prepared
) -> AsyncIterator[Generator]:
    sched = Scheduler(
        runtime,
        codec.tokenizer,
        max_queue=256,
        prefill_tokens=384,
        dispatch=loop_dispatch(asyncio.get_running_loop()),
    )
    model = HostedModel(
        entry, codec, sched, runtime.provider, grammars=prepared.grammars, tokens=prepared.tokens
    )
    sched.start()
    try:
        yield Generator(ModelRegistry([entry]), {entry.name: model}, 256, max_n=8)
    finally:
        sched.stop()


def chat(content: str, **fields: Any) -> pb.GenerateRequest:
    """A chat request; greedy unless `sampling` says otherwise."""
    fields.setdefault("sampling", pb.SamplingParams(temperature=0.0))
    return pb.GenerateRequest(
        model="smollm2-135m-instruct",
        messages=pb.Messages(messages=[pb.ChatMessage(role="user", content=content)]),
        **fields,
    )


def sampling(temperature: float = 0.0, **fields: Any) -> pb.SamplingParams:
    return pb.SamplingParams(temperature=temperature, **fields)


def schema_format(schema: dict, strict: bool = True) -> pb.ResponseFormat:
    return pb.ResponseFormat(
        type="json_schema",
        json_schema=pb.JsonSchemaFormat(name="out", schema=json.dumps(schema), strict=strict),
    )


class Result:
    """One Generate stream, split by choice."""

    def __init__(self, messages: list[pb.GenerateResponse]) -> None:
        self.messages = messages
        self.usage = messages[-1].usage
        self.choices: dict[int, list[pb.GenerateResponse]] = {}
        for m in messages:
            self.choices.setdefault(m.index, []).append(m)

    def text(self, i: int = 0) -> str:
        return "".join(m.text for m in self.choices[i])

    def finish(self, i: int = 0) -> str:
        return self.choices[i][-1].finish_reason

    def logprobs(self, i: int = 0) -> list[pb.TokenLogprob]:
        return [lp for m in self.choices[i] for lp in m.logprobs]

    def calls(self, i: int = 0) -> list[dict[str, str]]:
        calls: list[dict[str, str]] = []
        for m in self.choices[i]:
            for d in m.tool_calls:
                if d.id:
                    assert d.index == len(calls) and d.name
                    calls.append({"id": d.id, "name": d.name, "arguments": d.arguments})
                else:
                    assert not d.name
                    calls[d.index]["arguments"] += d.arguments
        return calls

    def outcome(self) -> list[tuple]:
        """What a caller sees, ids aside (they are random by design)."""
        out = []
        for i in sorted(self.choices):
            calls = [(c["name"], c["arguments"]) for c in self.calls(i)]
            lps = [(lp.token_id, lp.logprob, len(lp.top_logprobs)) for lp in self.logprobs(i)]
            out.append((i, self.text(i), calls, lps, self.finish(i)))
        return out


async def run(gen: Generator, req: pb.GenerateRequest) -> Result:
    return Result([m async for m in gen.generate(req)])


async def run_all(gen: Generator, reqs: list[pb.GenerateRequest]) -> list[Result]:
    return list(await asyncio.gather(*(run(gen, r) for r in reqs)))


SCHEMAS: list[dict[str, Any]] = [
    {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 24},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
        },
        "required": ["name", "age"],
    },
    {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 24},
            "country": {"enum": ["France", "Italy", "Spain", "Other"]},
            "capital": {"type": "boolean"},
        },
        "required": ["city", "country", "capital"],
    },
    {
        "type": "object",
        "properties": {
            "title": {"type": "string", "maxLength": 30},
            "tags": {
                "type": "array",
                "items": {"enum": ["news", "sport", "tech", "food"]},
                "minItems": 1,
                "maxItems": 3,
            },
        },
        "required": ["title", "tags"],
    },
    {
        "type": "object",
        "properties": {
            "person": {
                "type": "object",
                "properties": {
                    "first": {"type": "string", "maxLength": 16},
                    "last": {"type": "string", "maxLength": 16},
                },
                "required": ["first", "last"],
            },
            "address": {
                "type": "object",
                "properties": {
                    "street": {"type": "string", "maxLength": 24},
                    "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                },
                "required": ["zip"],
            },
        },
        "required": ["person", "address"],
    },
    {
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "maxLength": 12},
                        "qty": {"type": "integer", "minimum": 1, "maximum": 9},
                    },
                    "required": ["name", "qty"],
                },
                "maxItems": 3,
            },
            "paid": {"type": "boolean"},
        },
        "required": ["items", "paid"],
    },
    {
        "type": "object",
        "properties": {
            "answer": {"enum": ["yes", "no", "maybe"]},
            "confidence": {"type": "integer", "minimum": 0, "maximum": 100},
            "note": {"anyOf": [{"type": "string", "maxLength": 20}, {"type": "null"}]},
        },
        "required": ["answer", "confidence", "note"],
    },
    {
        "type": "object",
        "properties": {
            "steps": {
                "type": "array",
                "items": {"type": "string", "maxLength": 20},
                "minItems": 2,
                "maxItems": 4,
            }
        },
        "required": ["steps"],
    },
    {
        "type": "object",
        "properties": {
            "color": {"enum": ["red", "green", "blue"]},
            "rgb": {
                "type": "array",
                "items": {"type": "integer", "minimum": 0, "maximum": 255},
                "minItems": 3,
                "maxItems": 3,
            },
        },
        "required": ["color", "rgb"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "event": {
                "type": "object",
                "properties": {
                    "kind": {"enum": ["meeting", "call", "lunch"]},
                    "day": {"enum": ["mon", "tue", "wed", "thu", "fri"]},
                    "with": {
                        "type": "array",
                        "items": {"type": "string", "maxLength": 10},
                        "maxItems": 2,
                    },
                },
                "required": ["kind", "day", "with"],
            }
        },
        "required": ["event"],
    },
    {
        "type": "object",
        "properties": {
            "valid": {"type": "boolean"},
            "score": {"type": "integer", "minimum": -10, "maximum": 10},
            "level": {"enum": [1, 2, 3]},
        },
        "required": ["valid", "score", "level"],
    },
]
PROMPTS = [
    "Describe a person as JSON.",
    "Give me a city as JSON.",
    "Tag a news article.",
    "Who lives where? Answer in JSON.",
    "A shopping list, please.",
]


def _closed(schema: Any) -> Any:
    """The schema as strict mode means it: no property beyond those listed."""
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _closed(v) if k in ("items", "anyOf") else v for k, v in schema.items()}
    if "properties" in schema:
        out["properties"] = {k: _closed(v) for k, v in schema["properties"].items()}
        out.setdefault("additionalProperties", False)
    return out


async def test_fifty_json_schemas_at_temperature_one_all_validate(generator: Generator) -> None:
    reqs, schemas = [], []
    for i in range(50):
        schema = SCHEMAS[i % len(SCHEMAS)]
        reqs.append(
            chat(
                PROMPTS[i % len(PROMPTS)],
                sampling=sampling(1.0, seed=1000 + i),
                response_format=schema_format(schema, strict=True),
                max_tokens=300,
            )
        )
        schemas.append(schema)
    for result, schema in zip(await run_all(generator, reqs), schemas, strict=True):
        assert result.finish() == "stop", result.text()
        jsonschema.validate(json.loads(result.text()), _closed(schema))


async def test_json_object_output_is_always_json(generator: Generator, prepared: Prepared) -> None:
    # As OpenAI requires for json_object, each prompt asks for JSON.
    prompts = [
        "List three fruits as a JSON object.",
        "Describe a cat in JSON.",
        "What is 2 + 2? Reply in JSON.",
        "Say hello in JSON.",
        "Give me a city as JSON.",
    ]
    reqs = [
        chat(
            p,
            sampling=sampling(t, seed=i),
            response_format=pb.ResponseFormat(type="json_object"),
            logprobs=True,
            max_tokens=120,
        )
        for i, p in enumerate(prompts)
        for t in (0.0, 1.0)
    ]
    results = await run_all(generator, reqs)
    grammar = json_grammar({"type": "object"}, strict=False)
    for result in results:
        if result.finish() == "stop":
            assert isinstance(json.loads(result.text()), dict)
        else:
            # Cut short by max_tokens (a small model can loop inside a string): still the
            # start of a JSON object, as with OpenAI's JSON mode.
            assert result.finish() == "length"
            matcher = prepared.grammars.matcher(grammar, "p")
            assert matcher.consume_tokens([lp.token_id for lp in result.logprobs()])
            assert not matcher.is_accepting()
    assert any(r.finish() == "stop" for r in results)


WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 30},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
}
ADD = {
    "type": "object",
    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
    "required": ["a", "b"],
}
TOOLS = [
    pb.Tool(name="get_weather", description="Weather in a city", parameters=json.dumps(WEATHER)),
    pb.Tool(name="add", description="Adds two integers", parameters=json.dumps(ADD), strict=True),
]
SCHEMA_OF = {"get_weather": WEATHER, "add": _closed(ADD)}
TOOL_PROMPTS = ["What is the weather in Paris?", "What is 21 plus 21?", "Tell me a joke."]


async def test_required_and_named_tool_choices_give_valid_calls(generator: Generator) -> None:
    reqs = []
    for i, prompt in enumerate(TOOL_PROMPTS):
        for choice in (pb.ToolChoice(mode="required"), pb.ToolChoice(function="add")):
            reqs.append(
                chat(
                    prompt,
                    tools=TOOLS,
                    tool_choice=choice,
                    parallel_tool_calls=False,
                    sampling=sampling(1.0, seed=i),
                    max_tokens=120,
                )
            )
    results = await run_all(generator, reqs)
    for req, result in zip(reqs, results, strict=True):
        assert result.finish() == "tool_calls"
        assert result.text() == ""
        (call,) = result.calls()
        assert re.fullmatch(r"call_[0-9a-f]{24}", call["id"])
        if req.tool_choice.function:
            assert call["name"] == "add"
        jsonschema.validate(json.loads(call["arguments"]), SCHEMA_OF[call["name"]])
    ids = [c["id"] for r in results for c in r.calls()]
    assert len(set(ids)) == len(ids)


async def test_parallel_calls_are_each_valid(generator: Generator) -> None:
    result = await run(
        generator,
        chat(
            "Weather in Paris and in Rome?",
            tools=TOOLS,
            tool_choice=pb.ToolChoice(mode="required"),
            sampling=sampling(0.0),
            max_tokens=200,
        ),
    )
    calls = result.calls()
    assert calls and len({c["id"] for c in calls}) == len(calls)
    complete = calls if result.finish() == "tool_calls" else calls[:-1]  # "length" cuts the last
    assert complete
    for call in complete:
        jsonschema.validate(json.loads(call["arguments"]), SCHEMA_OF[call["name"]])


async def test_auto_gives_text_or_a_valid_call(generator: Generator) -> None:
    reqs = [
        chat(p, tools=TOOLS, sampling=sampling(1.0, seed=s), max_tokens=80)
        for p in TOOL_PROMPTS
        for s in range(3)
    ]
    for result in await run_all(generator, reqs):
        calls = result.calls()
        if calls:
            assert result.text() == "" and result.finish() in ("tool_calls", "length")
            if result.finish() == "tool_calls":
                for call in calls:
                    jsonschema.validate(json.loads(call["arguments"]), SCHEMA_OF[call["name"]])
        else:
            assert result.text() and not result.text().startswith("<")
            assert result.finish() in ("stop", "length")


async def test_none_describes_tools_but_generates_text(generator: Generator) -> None:
    result = await run(
        generator,
        chat(TOOL_PROMPTS[0], tools=TOOLS, tool_choice=pb.ToolChoice(mode="none"), max_tokens=30),
    )
    assert result.calls() == [] and result.text()
    assert result.usage.prompt_tokens > 150  # the definitions are in the prompt


def _reference_calls(text: str) -> list[tuple[str, str]]:
    """Calls read from the whole output text at once, arguments in the compact layout."""
    calls = []
    for block in text.split("<tool_call>\n")[1:]:
        body = json.loads(block.split("\n</tool_call>")[0])
        calls.append((body["name"], json.dumps(body["arguments"], ensure_ascii=False)))
    return calls


async def test_streamed_call_deltas_assemble_to_the_generated_calls(
    generator: Generator, codec: TextCodec
) -> None:
    result = await run(
        generator,
        chat(
            "What is the weather in Paris?",
            tools=TOOLS,
            tool_choice=pb.ToolChoice(function="get_weather"),
            parallel_tool_calls=False,
            sampling=sampling(0.7, seed=5),
            logprobs=True,
            max_tokens=200,
        ),
    )
    assert result.finish() == "tool_calls"
    # The tokens themselves (reported through logprobs) decoded at once, end token aside.
    ids = [lp.token_id for lp in result.logprobs()]
    whole = codec.tokenizer.decode(ids, skip_special_tokens=True)
    assert [(c["name"], c["arguments"]) for c in result.calls()] == _reference_calls(whole)
    assert len(result.calls()) == 1
    # Many small messages: the deltas of one call came in several pieces.
    assert sum(len(m.tool_calls) for m in result.messages) > 3


async def test_logprobs_one_entry_per_token_and_consistent(generator: Generator) -> None:
    reqs = [
        chat(PROMPTS[0], sampling=sampling(0.0), logprobs=True, top_logprobs=5, max_tokens=40),
        chat(PROMPTS[1], sampling=sampling(1.0, seed=3), logprobs=True, top_logprobs=5),
        chat(
            PROMPTS[2],
            sampling=sampling(1.0, seed=4),
            logprobs=True,
            top_logprobs=20,
            response_format=schema_format(SCHEMAS[2]),
        ),
        chat(PROMPTS[3], sampling=sampling(0.0), logprobs=True, max_tokens=10),
    ]
    greedy, sampled, constrained, bare = await run_all(generator, reqs)
    for result, top in ((greedy, 5), (sampled, 5), (constrained, 20), (bare, 0)):
        lps = result.logprobs()
        # One entry per completion token but an end-of-sequence one, which OpenAI does not list
        # (a grammar that completed ends the choice without sampling it).
        missing = result.usage.completion_tokens - len(lps)
        assert missing in (0, 1)
        assert not missing or result.messages[-1].finish_reason == "stop"
        assert all(lp.token_id != 2 for lp in lps)
        text = b"".join(lp.token_bytes for lp in lps).decode()
        assert text == result.text()
        for lp in lps:
            assert lp.logprob <= 0.0
            assert len(lp.top_logprobs) == top or (result is constrained and lp.top_logprobs)
            assert lp.token == lp.token_bytes.decode("utf-8", errors="backslashreplace")
            tops = [t.logprob for t in lp.top_logprobs]
            assert tops == sorted(tops, reverse=True)
            by_id = {t.token_id: t.logprob for t in lp.top_logprobs}
            if lp.token_id in by_id:
                assert by_id[lp.token_id] == lp.logprob
    for lp in greedy.logprobs():
        assert lp.top_logprobs[0].token_id == lp.token_id
    # Under the constraint, probabilities are over the allowed tokens only: the first position
    # allows only tokens that open an object, and they hold all the mass.
    first = constrained.logprobs()[0]
    assert all(t.token.startswith("{") for t in first.top_logprobs)
    assert math.fsum(math.exp(t.logprob) for t in first.top_logprobs) == pytest.approx(1.0)


async def test_logprobs_are_before_temperature_and_after_logit_bias(generator: Generator) -> None:
    def first(temperature: float, bias: dict[int, float] | None = None) -> pb.GenerateRequest:
        return chat(
            PROMPTS[0],
            sampling=sampling(temperature, seed=1, logit_bias=bias or {}),
            logprobs=True,
            top_logprobs=20,
            max_tokens=1,
        )

    cold, warm, hot = await run_all(generator, [first(0.0), first(0.6), first(1.9)])
    tops = [[(t.token_id, t.logprob) for t in r.logprobs()[0].top_logprobs] for r in (cold, warm)]
    assert tops[0] == tops[1] == [(t.token_id, t.logprob) for t in hot.logprobs()[0].top_logprobs]
    # +3 on the second most likely token: every logprob moves as log-softmax(logits + bias) says.
    base = {t.token_id: t.logprob for t in cold.logprobs()[0].top_logprobs}
    second = cold.logprobs()[0].top_logprobs[1].token_id
    biased = await run(generator, first(0.0, {second: 3.0}))
    shift = math.log(1 - math.exp(base[second]) + math.exp(base[second] + 3.0))
    for t in biased.logprobs()[0].top_logprobs:
        if t.token_id in base:
            expected = base[t.token_id] + (3.0 if t.token_id == second else 0.0) - shift
            assert t.logprob == pytest.approx(expected, abs=2e-4)


async def test_n_choices_are_seeded_reproducible_and_counted(generator: Generator) -> None:
    def req() -> pb.GenerateRequest:
        return chat(PROMPTS[4], n=4, sampling=sampling(1.0, seed=42), max_tokens=30)

    first, again = await run_all(generator, [req(), req()])
    assert sorted(first.choices) == [0, 1, 2, 3]
    assert first.outcome() == again.outcome()
    assert len({first.text(i) for i in range(4)}) > 1  # each choice samples on its own
    assert first.messages[0].HasField("model")
    assert [m.HasField("usage") for m in first.messages].count(True) == 1
    per_choice = [sum(m.token_count for m in first.choices[i]) for i in range(4)]
    assert first.usage.completion_tokens == sum(per_choice)
    alone = await run(generator, chat(PROMPTS[4], sampling=sampling(1.0, seed=42), max_tokens=30))
    assert first.usage.prompt_tokens == alone.usage.prompt_tokens  # the prompt counts once
    assert alone.text() == first.text(0)  # choice 0 samples with the seed itself
    greedy = await run(generator, chat(PROMPTS[0], n=2, max_tokens=40))
    assert (
        greedy.text(0)
        == greedy.text(1)
        == (await run(generator, chat(PROMPTS[0], max_tokens=40))).text()
    )


async def test_logit_bias_bans_and_forces_tokens(generator: Generator, codec: TextCodec) -> None:
    plain = await run(generator, chat(PROMPTS[1], logprobs=True, max_tokens=30))
    frequent = max(
        {lp.token_id for lp in plain.logprobs()},
        key=lambda t: sum(lp.token_id == t for lp in plain.logprobs()),
    )
    banned = await run_all(
        generator,
        [
            chat(
                PROMPTS[1],
                sampling=sampling(temp, seed=7, logit_bias={frequent: -100}),
                logprobs=True,
                max_tokens=30,
            )
            for temp in (0.0, 1.0)
        ],
    )
    for result in banned:
        assert frequent not in {lp.token_id for lp in result.logprobs()}
    forced_token = codec.encode(" river")[0]
    forced = await run(
        generator,
        chat(
            PROMPTS[1],
            sampling=sampling(1.0, seed=7, logit_bias={forced_token: 100}),
            logprobs=True,
            max_tokens=8,
        ),
    )
    assert {lp.token_id for lp in forced.logprobs()} == {forced_token}
    assert forced.text() == " river" * 8


STORY = "Write a story about a river that runs through town."


def _repetition(result: Result) -> float:
    """The share of generated tokens that repeat an earlier one."""
    ids = [lp.token_id for lp in result.logprobs()]
    return (len(ids) - len(set(ids))) / len(ids)


async def test_penalties_move_outputs_in_the_documented_direction(generator: Generator) -> None:
    def ask(prompt: str, **penalties: float) -> pb.GenerateRequest:
        return chat(prompt, sampling=sampling(0.0, **penalties), logprobs=True, max_tokens=60)

    for prompt in (STORY, "What is the capital of France?"):
        plain, frequency, presence, eager = map(
            _repetition,
            await run_all(
                generator,
                [
                    ask(prompt),
                    ask(prompt, frequency_penalty=1.0),
                    ask(prompt, presence_penalty=1.5),
                    ask(prompt, frequency_penalty=-2.0),
                ],
            ),
        )
        # Positive penalties: fewer repeated tokens; negative: more.
        assert frequency < plain and presence < plain
        assert eager > plain


async def test_mixed_batch_equals_each_request_alone(generator: Generator) -> None:
    reqs = [
        chat(PROMPTS[0], max_tokens=30),
        chat(PROMPTS[1], sampling=sampling(1.0, seed=11), max_tokens=30),
        chat(
            PROMPTS[2], sampling=sampling(1.0, seed=12), response_format=schema_format(SCHEMAS[2])
        ),
        chat(STORY, sampling=sampling(0.8, seed=13, frequency_penalty=0.8), max_tokens=30),
        chat(PROMPTS[3], sampling=sampling(0.0, logit_bias={28: -100, 30: 5}), max_tokens=20),
        chat(
            PROMPTS[4],
            sampling=sampling(1.0, seed=14),
            logprobs=True,
            top_logprobs=3,
            max_tokens=20,
        ),
        chat(
            TOOL_PROMPTS[0], tools=TOOLS, tool_choice=pb.ToolChoice(mode="required"), max_tokens=80
        ),
        chat(PROMPTS[0], n=3, sampling=sampling(1.0, seed=15), max_tokens=20),
        chat(PROMPTS[1], response_format=pb.ResponseFormat(type="json_object"), max_tokens=60),
    ]
    alone = [(await run(generator, r)).outcome() for r in reqs]
    together = [r.outcome() for r in await run_all(generator, reqs)]
    assert together == alone


async def test_bad_fields_are_refused_by_name(generator: Generator) -> None:
    bad_schema = {"type": "object", "properties": {"a": {"type": "strin"}}}
    cases = [
        (
            chat("x", response_format=schema_format(bad_schema)),
            "response_format.json_schema.schema",
        ),
        (
            chat("x", tools=[TOOLS[0], pb.Tool(name="f", parameters=json.dumps(bad_schema))]),
            "tools[1].function.parameters",
        ),
        (chat("x", n=9), "n"),
        (chat("x", sampling=sampling(presence_penalty=2.5)), "presence_penalty"),
        (chat("x", sampling=sampling(logit_bias={49152: 1})), "logit_bias"),
        (chat("x", logprobs=True, top_logprobs=21), "top_logprobs"),
        (chat("x", tool_choice=pb.ToolChoice(function="add")), "tool_choice"),
    ]
    for req, param in cases:
        with pytest.raises(InvalidArgument) as exc:
            await run(generator, req)
        assert exc.value.param == param


async def test_the_first_message_counts_the_prompt(generator: Generator) -> None:
    # A caller whose stream breaks before the end still knows what the prompt cost.
    result = await run(generator, chat(PROMPTS[0], max_tokens=3))
    first, *rest = result.messages
    assert first.prompt_tokens == result.usage.prompt_tokens > 0
    assert all(m.prompt_tokens == 0 for m in rest)
