"""OpenAI requests for hosted models as the engine's `GenerateRequest`, and their reservation
bounds.

Bounds hold from above as everywhere (a token is at least one byte): the text of every message,
the JSON of assistant tool calls and of tool definitions as the engine writes them into the
prompt (`services.engine.tools`: one JSON line per tool, fixed instructions around them, a
`<tool_call>` frame per call and a `<tool_response>` frame per result), allowances per message
and per request for the chat template, and the completion cap times `n`.
"""

from __future__ import annotations

import json

from services.edge.governance import Bounds
from services.edge.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ResponseFormat,
    schema_text,
)
from services.edge.targets import Target
from services.pb.engine.v1 import engine_pb2

# A chat template's overhead in tokens, used only to bound the reservation from above: per
# message (role markers, separators), and once per request (a default system prompt the template
# adds, the assistant header).
TEMPLATE_OVERHEAD_TOKENS = 16
TEMPLATE_FIXED_TOKENS = 96
# The engine's fixed tool instructions (under 600 bytes) and the frame of one call or result.
TOOLS_FIXED_TOKENS = 768
TOOL_FRAME_TOKENS = 48


def sampling(req: ChatCompletionRequest | CompletionRequest) -> engine_pb2.SamplingParams:
    params = engine_pb2.SamplingParams()
    if req.temperature is not None:
        params.temperature = req.temperature
    if req.top_p is not None:
        params.top_p = req.top_p
    if req.top_k is not None:
        params.top_k = req.top_k
    if req.seed is not None:
        params.seed = req.seed
    if req.presence_penalty is not None:
        params.presence_penalty = req.presence_penalty
    if req.frequency_penalty is not None:
        params.frequency_penalty = req.frequency_penalty
    for token, bias in req.token_bias().items():
        params.logit_bias[token] = bias
    return params


def completion_bound(limit: int | None, model: engine_pb2.ModelInfo) -> int:
    """The most completion tokens one choice can produce: its own cap, else the model's."""
    bound = limit or model.default_max_tokens or model.context_length
    return min(bound, model.context_length) if model.context_length else bound


def response_format(fmt: ResponseFormat) -> engine_pb2.ResponseFormat:
    out = engine_pb2.ResponseFormat(type=fmt.type)
    if fmt.json_schema is not None:
        js = fmt.json_schema
        out.json_schema.CopyFrom(
            engine_pb2.JsonSchemaFormat(
                name=js.name,
                description=js.description or "",
                schema=schema_text(js.schema_),
                strict=bool(js.strict),
            )
        )
    return out


def chat_request(req: ChatCompletionRequest, model: str) -> engine_pb2.GenerateRequest:
    messages = engine_pb2.Messages()
    for m in req.messages:
        msg = messages.messages.add(role=m.role, content=m.text())
        if m.tool_call_id:
            msg.tool_call_id = m.tool_call_id
        if m.name:
            msg.name = m.name
        for call in m.tool_calls or ():
            msg.tool_calls.add(
                id=call.id, name=call.function.name, arguments=call.function.arguments
            )
    out = engine_pb2.GenerateRequest(
        model=model,
        messages=messages,
        sampling=sampling(req),
        stop=req.stop_list(),
        n=req.choices(),
        logprobs=bool(req.logprobs),
        top_logprobs=req.top_logprobs or 0,
    )
    if (limit := req.token_limit()) is not None:
        out.max_tokens = limit
    for tool in req.tools or ():
        fn = tool.function
        out.tools.add(
            name=fn.name,
            description=fn.description or "",
            parameters=schema_text(fn.parameters),
            strict=bool(fn.strict),
        )
    if (named := req.named_function()) is not None:
        out.tool_choice.function = named
    elif isinstance(req.tool_choice, str):
        out.tool_choice.mode = req.tool_choice
    if req.parallel_tool_calls is not None:
        out.parallel_tool_calls = req.parallel_tool_calls
    if req.response_format is not None:
        out.response_format.CopyFrom(response_format(req.response_format))
    return out


def completion_request(req: CompletionRequest, model: str) -> engine_pb2.GenerateRequest:
    out = engine_pb2.GenerateRequest(
        model=model,
        prompt=req.prompt_text(),
        sampling=sampling(req),
        stop=req.stop_list(),
        n=req.choices(),
        logprobs=req.logprobs is not None,
        top_logprobs=req.logprobs or 0,
    )
    if (limit := req.token_limit()) is not None:
        out.max_tokens = limit
    return out


def chat_bounds(req: ChatCompletionRequest, target: Target) -> Bounds:
    size = TEMPLATE_FIXED_TOKENS
    for m in req.messages:
        size += len(m.text().encode()) + TEMPLATE_OVERHEAD_TOKENS
        for call in m.tool_calls or ():
            fn = call.function
            size += len(fn.name.encode()) + len(fn.arguments.encode()) + TOOL_FRAME_TOKENS
        if m.role == "tool":
            size += TOOL_FRAME_TOKENS
    if req.tools:
        size += TOOLS_FIXED_TOKENS
        for tool in req.tools:
            definition = tool.function.model_dump(exclude_none=True)
            size += len(json.dumps(definition, ensure_ascii=False).encode()) + TOOL_FRAME_TOKENS
    limit = completion_bound(req.token_limit(), target.info)
    return Bounds(size, limit * req.choices())


def completion_bounds(req: CompletionRequest, target: Target) -> Bounds:
    limit = completion_bound(req.token_limit(), target.info)
    return Bounds(len(req.prompt_text().encode()) + 1, limit * req.choices())
