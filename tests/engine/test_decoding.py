"""Request validation into per-choice settings: every refusal names its field."""

from __future__ import annotations

import json

import pytest

from services.common.errors import InvalidArgument
from services.engine import decoding
from services.pb.engine.v1 import engine_pb2 as pb

VOCAB = 100
TOOL = pb.Tool(name="f", parameters=json.dumps({"type": "object"}))


def chat(**fields: object) -> pb.GenerateRequest:
    msgs = pb.Messages(messages=[pb.ChatMessage(role="user", content="hi")])
    return pb.GenerateRequest(model="m", messages=msgs, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("req", "param"),
    [
        (chat(n=9), "n"),
        (chat(n=-1), "n"),
        (chat(top_logprobs=21, logprobs=True), "top_logprobs"),
        (chat(top_logprobs=2), "top_logprobs"),  # without logprobs
        (chat(sampling=pb.SamplingParams(presence_penalty=-2.1)), "presence_penalty"),
        (chat(sampling=pb.SamplingParams(frequency_penalty=2.5)), "frequency_penalty"),
        (chat(sampling=pb.SamplingParams(logit_bias={-1: 1})), "logit_bias"),
        (chat(sampling=pb.SamplingParams(logit_bias={VOCAB: 1})), "logit_bias"),
        (chat(sampling=pb.SamplingParams(logit_bias={5: 101})), "logit_bias"),
        (chat(sampling=pb.SamplingParams(temperature=3)), "temperature"),
    ],
)
def test_out_of_range_values_name_their_field(req: pb.GenerateRequest, param: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        n = decoding.choice_count(req, 8)
        decoding.samplers(req, n, VOCAB, decoding.logprobs_of(req))
    assert exc.value.param == param


def test_each_choice_samples_with_its_own_seed() -> None:
    req = chat(sampling=pb.SamplingParams(seed=-1, presence_penalty=0.5, logit_bias={3: -5}))
    samplers = decoding.samplers(req, 3, VOCAB, None)
    assert [s.presence_penalty for s in samplers] == [0.5] * 3
    fresh = [s.rng.integers(1 << 30) for s in decoding.samplers(req, 3, VOCAB, None)]
    again = [s.rng.integers(1 << 30) for s in samplers]
    assert fresh == again and len(set(fresh)) == 3
    assert decoding.choice_count(chat(), 8) == 1
    assert decoding.logprobs_of(chat(logprobs=True)) == 0
    assert decoding.logprobs_of(chat()) is None


@pytest.mark.parametrize(
    ("req", "param"),
    [
        (chat(response_format=pb.ResponseFormat(type="yaml")), "response_format.type"),
        (
            chat(response_format=pb.ResponseFormat(type="json_schema")),
            "response_format.json_schema.schema",
        ),
        (
            chat(
                response_format=pb.ResponseFormat(
                    type="json_schema", json_schema=pb.JsonSchemaFormat(schema="{x")
                )
            ),
            "response_format.json_schema.schema",
        ),
        (chat(tool_choice=pb.ToolChoice(mode="required")), "tool_choice"),
        (chat(tools=[TOOL], tool_choice=pb.ToolChoice(mode="always")), "tool_choice"),
        (chat(tools=[TOOL], tool_choice=pb.ToolChoice(function="g")), "tool_choice"),
    ],
)
def test_bad_output_constraints_name_their_field(req: pb.GenerateRequest, param: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        decoding.output_constraint(req, decoding.tools_of(req))
    assert exc.value.param == param


def test_tools_need_chat_messages() -> None:
    with pytest.raises(InvalidArgument) as exc:
        decoding.tools_of(pb.GenerateRequest(model="m", prompt="x", tools=[TOOL]))
    assert exc.value.param == "tools"


def test_which_output_gets_which_constraint() -> None:
    assert decoding.output_constraint(chat(), []) is None
    assert decoding.output_constraint(chat(tools=[TOOL]), []) is None  # no specs: plain
    specs = decoding.tools_of(chat(tools=[TOOL]))
    none = chat(tools=[TOOL], tool_choice=pb.ToolChoice(mode="none"))
    assert decoding.output_constraint(none, specs) is None
    json_mode = chat(response_format=pb.ResponseFormat(type="json_object"))
    only_json = decoding.output_constraint(json_mode, [])
    assert only_json is not None and not only_json.tools
    auto = decoding.output_constraint(chat(tools=[TOOL]), specs)
    assert auto is not None and auto.tools and not auto.calls_only
    assert [c.param for c in auto.checks] == ["tools[0].function.parameters"]
    required = chat(tools=[TOOL], tool_choice=pb.ToolChoice(mode="required"))
    forced = decoding.output_constraint(required, specs)
    assert forced is not None and forced.calls_only
    both = chat(tools=[TOOL], response_format=pb.ResponseFormat(type="json_object"))
    mixed = decoding.output_constraint(both, specs)
    assert mixed is not None and "%json" in mixed.grammar.text
    assert [c.param for c in mixed.checks] == ["tools[0].function.parameters", "response_format"]
