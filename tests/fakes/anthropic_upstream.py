"""A loopback stand-in for Anthropic's Messages API, scripted through the control API of
`tests.fakes.harness`: `POST /v1/messages` (streaming and not) and `POST
/v1/messages/count_tokens` (answers ``{"input_tokens": Script.prompt_tokens}``). It is strict
where the real API is (`tests.fakes.anthropic_validation`): it wants a key (`x-api-key`, or
a bearer token as the anthropic SDK 2.x sends it),
`anthropic-version`, `max_tokens`, alternating turns, well-formed content blocks (text, image,
document, tool_use, tool_result), tool results answering every tool_use of the turn before, tools
with a name and input_schema, and known tool_choice and output_config shapes.

Answers: `Script.reply` as a text block; or, with `Script.tool_calls`, the reply (when not empty)
then `tool_use` blocks (ids `toolu_<random>`, `stop_reason` "tool_use"); a request forcing one
tool (`tool_choice` type "tool") without scripted calls gets a call of that tool whose input is
`reply` when it is a JSON object (else {}). A request whose last user turn carries tool results
is answered with `reply` as text. Usage reports `cache_read_input_tokens` (`Script.cached_tokens`)
and `cache_creation_input_tokens` (`Script.cache_creation_tokens`) apart from `input_tokens`, as
Anthropic does, when either is set.

In-process: ``with anthropic_fake() as fake: ... fake.url``. As a process:
``python -m tests.fakes.anthropic_upstream --port N`` (base URL ``http://127.0.0.1:N``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.fakes.anthropic_validation import problem
from tests.fakes.harness import (
    DropConnection,
    FakeState,
    Record,
    RunningFake,
    Script,
    cli,
    control_routes,
    fragments,
    paced,
    pause,
    random_id,
    retry_headers,
)

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_response(
    status: int, message: str = "", headers: dict[str, str] | None = None
) -> JSONResponse:
    err_type = ERROR_TYPES.get(status, "api_error")
    body = {
        "type": "error",
        "error": {"type": err_type, "message": message or err_type.replace("_", " ")},
        "request_id": "req_fake",
    }
    return JSONResponse(
        body, status_code=status, headers={"request-id": "req_fake", **(headers or {})}
    )


def _event(name: str, payload: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps({'type': name, **payload})}\n\n".encode()


def _usage(script: Script, output: int) -> dict[str, int]:
    # Anthropic counts cache reads and writes apart from input_tokens.
    cached = script.cached_tokens + script.cache_creation_tokens
    usage = {"input_tokens": script.prompt_tokens - cached, "output_tokens": output}
    if cached:
        usage["cache_read_input_tokens"] = script.cached_tokens
        usage["cache_creation_input_tokens"] = script.cache_creation_tokens
    return usage


def _after_tool_results(body: dict[str, Any]) -> bool:
    last = body["messages"][-1]
    return (
        last["role"] == "user"
        and isinstance(last["content"], list)
        and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in last["content"])
    )


def _answer(script: Script, body: dict[str, Any]) -> tuple[list[str], list[dict[str, str]]]:
    """(text pieces, tool calls as {"name", "arguments"}) of the answer to this request."""
    if _after_tool_results(body):
        return script.pieces(), []
    if script.tool_calls:
        return (script.pieces() if script.reply else []), script.tool_calls
    choice = body.get("tool_choice") or {}
    if choice.get("type") == "tool":
        try:
            forced = json.loads(script.reply)
        except ValueError:
            forced = None
        arguments = script.reply if isinstance(forced, dict) else "{}"
        return [], [{"name": str(choice["name"]), "arguments": arguments}]
    return script.pieces(), []


def _content(text: list[str], calls: list[dict[str, str]]) -> list[dict[str, Any]]:
    """The answer's blocks; a tool_use block's id is made here, its input from the arguments
    (kept under "arguments" for the stream, which sends them as they were scripted)."""
    blocks: list[dict[str, Any]] = []
    if text or not calls:
        blocks.append({"type": "text", "text": "".join(text)})
    for call in calls:
        blocks.append(
            {
                "type": "tool_use",
                "id": random_id("toolu_"),
                "name": call["name"],
                "input": json.loads(call["arguments"]),
                "arguments": call["arguments"],
            }
        )
    return blocks


def _stop_reason(script: Script, calls: list[dict[str, str]]) -> str:
    return script.finish_reason or ("tool_use" if calls else "end_turn")


def _completion_tokens(script: Script, text: list[str], calls: list[dict[str, str]]) -> int:
    if not calls:
        return script.completion()
    return script.completion(len(text) + sum(len(fragments(c["arguments"])) for c in calls))


async def _stream(
    record: Record, script: Script, model: str, text: list[str], calls: list[dict[str, str]]
) -> AsyncIterator[bytes]:
    message = {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": model,
        "stop_reason": None,
        "stop_sequence": None,
        "usage": _usage(script, 1),
    }
    yield _event("message_start", {"message": message})
    # Each step: (event name, payload, whether it is a content chunk that the script counts).
    steps: list[tuple[str, dict[str, Any], bool]] = []
    for index, block in enumerate(_content(text, calls)):
        if block["type"] == "text":
            steps.append(
                (
                    "content_block_start",
                    {"index": index, "content_block": {"type": "text", "text": ""}},
                    False,
                )
            )
            steps.append(("ping", {}, False))
            for piece in text:
                delta = {"type": "text_delta", "text": piece}
                steps.append(("content_block_delta", {"index": index, "delta": delta}, True))
        else:
            start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            steps.append(("content_block_start", {"index": index, "content_block": start}, False))
            # The API's first input_json_delta of a call is often empty.
            for fragment in ["", *fragments(block["arguments"])]:
                delta = {"type": "input_json_delta", "partial_json": fragment}
                steps.append(
                    ("content_block_delta", {"index": index, "delta": delta}, bool(fragment))
                )
        steps.append(("content_block_stop", {"index": index}, False))
    sent = 0
    for name, payload, counted in steps:
        if counted:
            if script.drop_after_chunks is not None and sent >= script.drop_after_chunks:
                raise DropConnection()
            if (
                script.error_event_after_chunks is not None
                and sent >= script.error_event_after_chunks
            ):
                record.outcome = "error_event"
                err = {"type": "overloaded_error", "message": script.error_message or "Overloaded"}
                yield _event("error", {"error": err})
                return
            await pause(script.chunk_delay_s)
            sent += 1
        yield _event(name, payload)
    yield _event(
        "message_delta",
        {
            "delta": {"stop_reason": _stop_reason(script, calls), "stop_sequence": None},
            "usage": {"output_tokens": _completion_tokens(script, text, calls)},
        },
    )
    yield _event("message_stop", {})


def build_app(state: FakeState) -> Starlette:
    async def admit(
        request: Request, *, count_tokens: bool
    ) -> tuple[Record, Any, Script, Response | None]:
        """Records the request; the scripted failure or refusal, if any, as a response."""
        record, body = await state.record(request)
        script = state.current()
        await pause(script.response_delay_s)
        refusal: Response | None = None
        if failure := state.take_failure():
            record.outcome = "failed"
            refusal = error_response(
                failure.fail_status, failure.error_message, retry_headers(failure)
            )
            return record, body, script, refusal
        # The key comes as x-api-key, or as a bearer token (what the anthropic SDK 2.x sends).
        auth = request.headers.get("authorization", "")
        key = request.headers.get("x-api-key", "") or (
            auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else ""
        )
        if not key or (script.expected_key is not None and key != script.expected_key):
            refusal = error_response(401, "invalid x-api-key")
        elif not request.headers.get("anthropic-version"):
            refusal = error_response(400, "anthropic-version: header is required")
        elif found := problem(body, count_tokens=count_tokens):
            refusal = error_response(400, found)
        if refusal is not None:
            record.outcome = "rejected"
        return record, body, script, refusal

    async def messages(request: Request) -> Response:
        record, body, script, refusal = await admit(request, count_tokens=False)
        if refusal is not None:
            return refusal
        model = str(body["model"])
        text, calls = _answer(script, body)
        if not body.get("stream"):
            record.outcome = "completed"
            content = [
                {k: v for k, v in b.items() if k != "arguments"} for b in _content(text, calls)
            ]
            return JSONResponse(
                {
                    "id": "msg_fake",
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": content,
                    "stop_reason": _stop_reason(script, calls),
                    "stop_sequence": None,
                    "usage": _usage(script, _completion_tokens(script, text, calls)),
                }
            )
        return StreamingResponse(
            paced(record, _stream(record, script, model, text, calls)),
            media_type="text/event-stream",
        )

    async def count_tokens(request: Request) -> Response:
        record, _, script, refusal = await admit(request, count_tokens=True)
        if refusal is not None:
            return refusal
        record.outcome = "completed"
        return JSONResponse({"input_tokens": script.prompt_tokens})

    return Starlette(
        routes=[
            Route("/v1/messages", messages, methods=["POST"]),
            Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
            *control_routes(state),
        ]
    )


def anthropic_fake() -> RunningFake:
    """A fresh fake, not yet started (use it as a context manager)."""
    state = FakeState()
    return RunningFake(build_app(state), state)


if __name__ == "__main__":
    cli(build_app, "Fake Anthropic Messages API upstream for tests.")
