"""The OpenAI stand-in's Responses API: `POST /v1/responses` (streamed with named events and
sequence numbers, and not), `GET` and `DELETE /v1/responses/{id}`, in OpenAI's wire format.

Answers follow the chat fake's script (`tests.fakes.harness.Script`): a `message` output item
with `reply` (streamed as `Script.pieces()`), or a `function_call` item per `Script.tool_calls`
(`call_id` `call_<random>`, `reply` as a message before them when it is not empty) unless the
input's last item is a `function_call_output`, which is answered with `reply`: the tool-loop
rule of chat. Usage: `input_tokens` = `Script.prompt_tokens` (cached ones in
`input_tokens_details`), `output_tokens` = one per piece (or `completion_tokens`). A
`finish_reason` of "length" or "max_output_tokens" makes the response "incomplete". Responses
are stored unless `store` is false; `previous_response_id` must name a stored one, and a
`function_call_output` must answer a call of its input or of that previous response (the real
API's 400s). `drop_after_chunks`, `error_event_after_chunks` (an `error` event) and
`chunk_delay_s` apply to streams as for chat.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.fakes.harness import (
    DropConnection,
    FakeState,
    Record,
    Script,
    fragments,
    paced,
    pause,
    random_id,
)

Problem = tuple[str, str | None, str | None] | None  # (message, param, code)
Admit = Callable[[Request], Awaitable[tuple[Record, Any, Script, Response | None]]]
# (status, message, code, param) -> OpenAI's error response.
ErrorResponse = Callable[[int, str, str | None, str | None], Response]
ROLES = ("user", "system", "developer", "assistant")


class _ErrorSent(Exception):
    """The scripted error event went out: the stream ends there."""


def _items(body: dict[str, Any]) -> list[Any]:
    value = body.get("input")
    return value if isinstance(value, list) else []


def responses_problem(body: Any, stored: dict[str, Any]) -> Problem:
    """The first problem the real API would refuse with a 400, or None."""
    if not isinstance(body, dict):
        return "We could not parse the JSON body of your request.", None, None
    if not body.get("model"):
        return "Missing required parameter: 'model'.", "model", None
    if not isinstance(body.get("input"), str | list):
        return "Missing required parameter: 'input'.", "input", None
    cap = body.get("max_output_tokens")
    if cap is not None and (not isinstance(cap, int) or cap < 16):
        return (
            "Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 16.",
            "max_output_tokens",
            "integer_below_min_value",
        )
    previous = body.get("previous_response_id")
    calls: set[str] = set()
    if previous is not None:
        if previous not in stored:
            return (
                f"Previous response with id '{previous}' not found.",
                "previous_response_id",
                "previous_response_not_found",
            )
        calls |= {i["call_id"] for i in stored[previous]["output"] if i["type"] == "function_call"}
    for i, item in enumerate(_items(body)):
        if not isinstance(item, dict):
            return f"Invalid type for 'input[{i}]': expected an object.", f"input[{i}]", None
        kind = item.get("type", "message")
        if kind == "message" and item.get("role") not in ROLES:
            return f"Invalid value for 'input[{i}].role'.", f"input[{i}].role", None
        if kind == "function_call":
            calls.add(str(item.get("call_id")))
        if kind == "function_call_output" and item.get("call_id") not in calls:
            return (
                f"No tool call found for function call output with call_id {item.get('call_id')}.",
                "input",
                None,
            )
    for i, tool in enumerate(body.get("tools") or ()):
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            return f"Invalid value for 'tools[{i}].type'.", f"tools[{i}].type", None
        if tool["type"] == "function" and not tool.get("name"):
            return f"Missing required parameter: 'tools[{i}].name'.", f"tools[{i}].name", None
    return None


def _message(text: str, status: str) -> dict[str, Any]:
    return {
        "id": "msg_" + secrets.token_hex(24),
        "type": "message",
        "status": status,
        "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": text}],
        "role": "assistant",
    }


def _call(call: dict[str, str], status: str) -> dict[str, Any]:
    return {
        "id": "fc_" + secrets.token_hex(24),
        "type": "function_call",
        "status": status,
        "arguments": call["arguments"],
        "call_id": random_id("call_"),
        "name": call["name"],
    }


def build_response(script: Script, body: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The whole response object, and the text pieces its message streams as."""
    items = _items(body)
    last = items[-1] if items else None
    answered = isinstance(last, dict) and last.get("type") == "function_call_output"
    pieces = script.pieces()
    calls: list[dict[str, str]] = []
    if script.tool_calls and not answered:
        calls = script.tool_calls
        pieces = pieces if script.reply else []
    incomplete = script.finish_reason in ("length", "max_output_tokens")
    status = "incomplete" if incomplete else "completed"
    output = [_message("".join(pieces), status)] if pieces or not calls else []
    output += [_call(c, status) for c in calls]
    units = len(pieces) + sum(len(fragments(c["arguments"])) for c in calls)
    completion = script.completion(units if calls else None)
    response = {
        "id": "resp_" + secrets.token_hex(24),
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": str(body["model"]),
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation", "disabled"),
        "usage": {
            "input_tokens": script.prompt_tokens,
            "input_tokens_details": {"cached_tokens": script.cached_tokens},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": script.prompt_tokens + completion,
        },
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }
    return response, pieces


async def stream_events(
    record: Record, script: Script, response: dict[str, Any], pieces: list[str]
) -> AsyncIterator[bytes]:
    """The response's events in OpenAI's order, `event:` named and sequence-numbered."""
    sequence = 0
    deltas = 0

    def event(kind: str, **fields: Any) -> bytes:
        nonlocal sequence
        payload = {"type": kind, "sequence_number": sequence, **fields}
        sequence += 1
        return f"event: {kind}\ndata: {json.dumps(payload)}\n\n".encode()

    async def delta(kind: str, **fields: Any) -> AsyncIterator[bytes]:
        nonlocal deltas
        if script.drop_after_chunks is not None and deltas >= script.drop_after_chunks:
            raise DropConnection()
        error_after = script.error_event_after_chunks
        if error_after is not None and deltas >= error_after:
            record.outcome = "error_event"
            message = script.error_message or "The server had an error."
            yield event("error", code="server_error", message=message, param=None)
            raise _ErrorSent()
        deltas += 1
        await pause(script.chunk_delay_s)
        yield event(kind, **fields)

    start = {**response, "status": "in_progress", "output": [], "usage": None}
    start["incomplete_details"] = None
    yield event("response.created", response=start)
    yield event("response.in_progress", response=start)
    try:
        for index, item in enumerate(response["output"]):
            added = {**item, "status": "in_progress"}
            ids = {"item_id": item["id"], "output_index": index}
            if item["type"] == "message":
                yield event(
                    "response.output_item.added", output_index=index, item={**added, "content": []}
                )
                part = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
                yield event("response.content_part.added", content_index=0, part=part, **ids)
                for piece in pieces:
                    async for frame in delta(
                        "response.output_text.delta",
                        content_index=0,
                        delta=piece,
                        logprobs=[],
                        **ids,
                    ):
                        yield frame
                text = item["content"][0]["text"]
                yield event(
                    "response.output_text.done", content_index=0, text=text, logprobs=[], **ids
                )
                yield event(
                    "response.content_part.done", content_index=0, part=item["content"][0], **ids
                )
            else:
                yield event(
                    "response.output_item.added",
                    output_index=index,
                    item={**added, "arguments": ""},
                )
                for fragment in fragments(item["arguments"]):
                    async for frame in delta(
                        "response.function_call_arguments.delta", delta=fragment, **ids
                    ):
                        yield frame
                yield event(
                    "response.function_call_arguments.done", arguments=item["arguments"], **ids
                )
            yield event("response.output_item.done", output_index=index, item=item)
    except _ErrorSent:
        return
    kind = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
    yield event(kind, response=response)


def not_found(response_id: str) -> JSONResponse:
    body = {
        "error": {
            "message": f"Response with id '{response_id}' not found.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    return JSONResponse(body, status_code=404)


def responses_routes(state: FakeState, admit: Admit, error: ErrorResponse) -> list[Route]:
    async def create(request: Request) -> Response:
        record, body, script, refusal = await admit(request)
        if refusal is not None:
            return refusal
        with state.lock:
            problem = responses_problem(body, state.stored)
        if problem:
            record.outcome = "rejected"
            message, param, code = problem
            return error(400, message, code, param)
        response, pieces = build_response(script, body)
        if body.get("store", True) is not False:
            with state.lock:
                state.stored[response["id"]] = response
        if not body.get("stream"):
            record.outcome = "completed"
            return JSONResponse(response)
        return StreamingResponse(
            paced(record, stream_events(record, script, response, pieces)),
            media_type="text/event-stream",
        )

    async def retrieve(request: Request) -> Response:
        record, _, _, refusal = await admit(request)
        if refusal is not None:
            return refusal
        response_id = request.path_params["response_id"]
        with state.lock:
            response = state.stored.get(response_id)
        record.outcome = "completed" if response else "rejected"
        return JSONResponse(response) if response else not_found(response_id)

    async def delete(request: Request) -> Response:
        record, _, _, refusal = await admit(request)
        if refusal is not None:
            return refusal
        response_id = request.path_params["response_id"]
        with state.lock:
            response = state.stored.pop(response_id, None)
        record.outcome = "completed" if response else "rejected"
        if response is None:
            return not_found(response_id)
        return JSONResponse({"id": response_id, "object": "response", "deleted": True})

    return [
        Route("/v1/responses", create, methods=["POST"]),
        Route("/v1/responses/{response_id}", retrieve, methods=["GET"]),
        Route("/v1/responses/{response_id}", delete, methods=["DELETE"]),
    ]
