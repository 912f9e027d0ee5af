"""How a request wants its tokens chosen: sampling parameters, penalties, logit_bias, logprobs,
the number of choices, and the output constraint (response format, tools), validated.

Every check happens before anything is queued, and each failure is an InvalidArgument naming the
request field as OpenAI spells it (`presence_penalty`, `response_format.json_schema.schema`,
`tools[0].function.parameters`, ...), so the edge can hand it on unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from services.common.errors import InvalidArgument
from services.engine.constraints import (
    ANY_OBJECT,
    json_grammar,
    json_schema,
    lark_grammar,
    parse_schema,
)
from services.engine.sampling import Sampler
from services.engine.tools import Message, ToolSpec, tool_grammar, tool_specs
from services.pb.engine.v1 import engine_pb2

MAX_TOP_LOGPROBS = 20
PENALTY_RANGE = 2.0
BIAS_RANGE = 100.0
TOOL_MODES = ("none", "auto", "required")


@dataclass(frozen=True)
class Grammar:
    """One grammar to compile, and the field a compile error names."""

    text: str
    param: str


@dataclass(frozen=True)
class OutputConstraint:
    """What a choice's output must be: the grammar, the schemas checked one by one first (so
    that an error names the schema's own field), and whether the output holds tool calls."""

    grammar: Grammar
    checks: tuple[Grammar, ...] = ()
    tools: bool = False  # the output may be tool calls
    calls_only: bool = False  # the output must be tool calls


def messages_of(req: engine_pb2.GenerateRequest) -> list[Message]:
    return [
        Message(
            role=m.role,
            content=m.content,
            tool_calls=tuple((c.id, c.name, c.arguments) for c in m.tool_calls),
            tool_call_id=m.tool_call_id,
            name=m.name,
        )
        for m in req.messages.messages
    ]


def tools_of(req: engine_pb2.GenerateRequest) -> list[ToolSpec]:
    if req.tools and req.WhichOneof("input") != "messages":
        raise InvalidArgument("tools need chat messages, not a prompt", param="tools")
    return tool_specs([(t.name, t.description, t.parameters, t.strict) for t in req.tools])


def choice_count(req: engine_pb2.GenerateRequest, max_n: int) -> int:
    n = req.n or 1
    if not 1 <= n <= max_n:
        raise InvalidArgument(f"n must be between 1 and {max_n}", param="n")
    return n


def logprobs_of(req: engine_pb2.GenerateRequest) -> int | None:
    """None: no logprobs; k >= 0: the sampled token's and the k most likely ones."""
    if not 0 <= req.top_logprobs <= MAX_TOP_LOGPROBS:
        raise InvalidArgument(
            f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}", param="top_logprobs"
        )
    if not req.logprobs:
        if req.top_logprobs:
            raise InvalidArgument("top_logprobs needs logprobs to be true", param="top_logprobs")
        return None
    return int(req.top_logprobs)


def samplers(
    req: engine_pb2.GenerateRequest, n: int, vocab_size: int, logprobs: int | None
) -> list[Sampler]:
    """One sampler per choice; with a seed, choice i samples with seed + i."""
    s = req.sampling
    temperature = s.temperature if s.HasField("temperature") else 1.0
    top_p = s.top_p if s.HasField("top_p") else 1.0
    top_k = s.top_k if s.HasField("top_k") else 0
    if not 0.0 <= temperature <= 2.0:
        raise InvalidArgument("temperature must be between 0 and 2", param="temperature")
    if not 0.0 < top_p <= 1.0:
        raise InvalidArgument("top_p must be in (0, 1]", param="top_p")
    if top_k < 0:
        raise InvalidArgument("top_k must not be negative", param="top_k")
    presence = s.presence_penalty if s.HasField("presence_penalty") else 0.0
    frequency = s.frequency_penalty if s.HasField("frequency_penalty") else 0.0
    for name, value in (("presence_penalty", presence), ("frequency_penalty", frequency)):
        if not -PENALTY_RANGE <= value <= PENALTY_RANGE:
            raise InvalidArgument(f"{name} must be between -2 and 2", param=name)
    bias = dict(s.logit_bias)
    for token, value in bias.items():
        if not 0 <= token < vocab_size:
            raise InvalidArgument(
                f"logit_bias: token id {token} is not in the model's vocabulary "
                f"(0 to {vocab_size - 1})",
                param="logit_bias",
            )
        if not -BIAS_RANGE <= value <= BIAS_RANGE:
            raise InvalidArgument(
                f"logit_bias: the bias of token {token} must be between -100 and 100",
                param="logit_bias",
            )
    # Seeds may be negative in OpenAI's API; numpy wants a non-negative integer.
    seed = s.seed % 2**64 if s.HasField("seed") else None
    return [
        Sampler(
            temperature,
            top_p,
            top_k,
            None if seed is None else (seed + i) % 2**64,
            presence_penalty=presence,
            frequency_penalty=frequency,
            logit_bias=bias,
            logprobs=logprobs,
        )
        for i in range(n)
    ]


def _content_schema(req: engine_pb2.GenerateRequest) -> tuple[dict[str, Any], bool, str] | None:
    """(schema, strict, param) of the response format, or None for free text."""
    if not req.HasField("response_format"):
        return None
    fmt = req.response_format
    if fmt.type in ("", "text"):
        return None
    if fmt.type == "json_object":
        return dict(ANY_OBJECT), False, "response_format"
    if fmt.type == "json_schema":
        param = "response_format.json_schema.schema"
        if not fmt.HasField("json_schema") or not fmt.json_schema.schema.strip():
            raise InvalidArgument("response_format.json_schema.schema is required", param=param)
        return parse_schema(fmt.json_schema.schema, param), fmt.json_schema.strict, param
    raise InvalidArgument(
        "response_format.type must be text, json_object or json_schema",
        param="response_format.type",
    )


def output_constraint(
    req: engine_pb2.GenerateRequest, tools: list[ToolSpec]
) -> OutputConstraint | None:
    """The grammar a request's choices are held to, or None for unconstrained text."""
    content = _content_schema(req)
    mode, function = "auto" if tools else "none", ""
    if req.HasField("tool_choice"):
        which = req.tool_choice.WhichOneof("choice")
        if which == "mode":
            mode = req.tool_choice.mode
            if mode not in TOOL_MODES:
                raise InvalidArgument(
                    "tool_choice must be none, auto, required or a function",
                    param="tool_choice",
                )
        elif which == "function":
            mode, function = "function", req.tool_choice.function
    if mode in ("required", "function") and not tools:
        raise InvalidArgument(f"tool_choice {mode!r} needs tools", param="tool_choice")
    content_grammar = (
        None if content is None else Grammar(json_grammar(content[0], content[1]), content[2])
    )
    if mode == "none" or not tools:
        return None if content_grammar is None else OutputConstraint(content_grammar)
    position = {t.name: i for i, t in enumerate(tools)}
    if mode == "function":
        chosen = [t for t in tools if t.name == function]
        if not chosen:
            raise InvalidArgument(
                f"tool_choice names {function!r}, which is not among the tools",
                param="tool_choice",
            )
        tools = chosen
    parallel = req.parallel_tool_calls if req.HasField("parallel_tool_calls") else True
    calls_only = mode != "auto"
    checks = [
        Grammar(
            json_grammar(t.parameters, t.strict), f"tools[{position[t.name]}].function.parameters"
        )
        for t in tools
    ]
    body = None
    if content is not None and not calls_only:
        assert content_grammar is not None
        checks.append(content_grammar)
        body = f"%json {json.dumps(json_schema(content[0], content[1]))}"
    text = tool_grammar(tools, calls_only=calls_only, parallel=parallel, content=body)
    return OutputConstraint(
        Grammar(lark_grammar(text), "tools"), tuple(checks), tools=True, calls_only=calls_only
    )
