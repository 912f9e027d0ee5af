"""OpenAI chat and completion requests as the engine's GenerateRequest, and their bounds."""

from __future__ import annotations

import json
from typing import Any

from services.edge.openai import hosted_request
from services.edge.openai.protocol import ChatCompletionRequest, CompletionRequest
from services.edge.targets import Target
from services.pb.engine.v1 import engine_pb2 as pb

SCHEMA = {"type": "object", "properties": {"b": {"type": "string"}, "a": {"type": "integer"}}}
TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Weather.", "parameters": SCHEMA},
}
TARGET = Target(pb.ModelInfo(name="m", context_length=8192, default_max_tokens=512))


def chat(**fields: Any) -> ChatCompletionRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    return ChatCompletionRequest.model_validate(body)


def test_every_honoured_field_reaches_the_engine() -> None:
    req = chat(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_9",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"a": 1}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_9", "content": "sunny"},
        ],
        tools=[TOOL],
        tool_choice="required",
        parallel_tool_calls=False,
        response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": SCHEMA,
                                                                "strict": True}},
        logprobs=True,
        top_logprobs=3,
        n=2,
        temperature=0.5,
        top_p=0.9,
        top_k=40,
        seed=7,
        presence_penalty=0.25,
        frequency_penalty=-0.5,
        logit_bias={"42": -100},
        stop=["END"],
        max_completion_tokens=64,
    )  # fmt: skip
    gen = hosted_request.chat_request(req, "m@sha256:abc")
    assert gen.model == "m@sha256:abc" and gen.n == 2 and gen.max_tokens == 64
    assert [(m.role, m.content) for m in gen.messages.messages] == [
        ("system", "Be brief."),
        ("user", "Weather?"),
        ("assistant", ""),
        ("tool", "sunny"),
    ]
    call = gen.messages.messages[2].tool_calls[0]
    assert (call.id, call.name, call.arguments) == ("call_9", "get_weather", '{"a": 1}')
    assert gen.messages.messages[3].tool_call_id == "call_9"
    (tool,) = gen.tools
    # The schema is JSON text with the client's key order (the grammar follows it).
    assert (tool.name, tool.description, tool.parameters) == (
        "get_weather",
        "Weather.",
        json.dumps(SCHEMA),
    )
    assert gen.tool_choice.mode == "required" and gen.parallel_tool_calls is False
    fmt = gen.response_format
    assert (fmt.type, fmt.json_schema.name, fmt.json_schema.strict) == ("json_schema", "w", True)
    assert json.loads(fmt.json_schema.schema) == SCHEMA
    assert (gen.logprobs, gen.top_logprobs, list(gen.stop)) == (True, 3, ["END"])
    s = gen.sampling
    assert (s.top_k, s.seed, dict(s.logit_bias)) == (40, 7, {42: -100.0})
    assert round(s.presence_penalty, 3) == 0.25 and round(s.frequency_penalty, 3) == -0.5


def test_unset_fields_stay_unset() -> None:
    gen = hosted_request.chat_request(chat(), "m")
    assert not gen.HasField("max_tokens") and not gen.HasField("parallel_tool_calls")
    assert not gen.HasField("tool_choice") and not gen.HasField("response_format")
    assert not gen.sampling.HasField("temperature") and not gen.sampling.HasField("seed")
    assert gen.n == 1 and not gen.logprobs


def test_a_named_tool_choice() -> None:
    req = chat(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    gen = hosted_request.chat_request(req, "m")
    assert gen.tool_choice.WhichOneof("choice") == "function"
    assert gen.tool_choice.function == "get_weather"


def test_bounds_count_tools_calls_and_choices() -> None:
    plain = hosted_request.chat_bounds(chat(max_tokens=10), TARGET)
    with_tools = hosted_request.chat_bounds(chat(max_tokens=10, tools=[TOOL], n=3), TARGET)
    assert with_tools.completion == 30 and plain.completion == 10
    definition = len(json.dumps(TOOL["function"]).encode())
    assert with_tools.prompt - plain.prompt >= hosted_request.TOOLS_FIXED_TOKENS + definition
    default = hosted_request.chat_bounds(chat(), TARGET)
    assert default.completion == 512  # the model's default cap


def test_legacy_completions_logprobs_and_n() -> None:
    req = CompletionRequest.model_validate(
        {"model": "m", "prompt": "Once", "logprobs": 2, "n": 2, "max_tokens": 5}
    )
    gen = hosted_request.completion_request(req, "m")
    assert (gen.prompt, gen.logprobs, gen.top_logprobs, gen.n, gen.max_tokens) == (
        "Once",
        True,
        2,
        2,
        5,
    )
    assert hosted_request.completion_bounds(req, TARGET).completion == 10
