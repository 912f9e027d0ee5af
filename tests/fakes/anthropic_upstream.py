"""A loopback stand-in for Anthropic's `POST /v1/messages` (streaming and not), scripted through
the control API of `tests.fakes.harness`. It is strict where the real API is: it wants
`x-api-key`, `anthropic-version`, `max_tokens`, and user/assistant turns that alternate.

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

from tests.fakes.harness import (
    DropConnection,
    FakeState,
    Record,
    RunningFake,
    Script,
    cli,
    control_routes,
    paced,
    pause,
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
    # Anthropic counts cache reads apart from input_tokens.
    usage = {"input_tokens": script.prompt_tokens - script.cached_tokens, "output_tokens": output}
    if script.cached_tokens:
        usage["cache_read_input_tokens"] = script.cached_tokens
    return usage


async def _stream(record: Record, script: Script, model: str) -> AsyncIterator[bytes]:
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
    yield _event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
    yield _event("ping", {})
    for i, piece in enumerate(script.pieces()):
        if script.drop_after_chunks is not None and i >= script.drop_after_chunks:
            raise DropConnection()
        if script.error_event_after_chunks is not None and i >= script.error_event_after_chunks:
            record.outcome = "error_event"
            err = {"type": "overloaded_error", "message": script.error_message or "Overloaded"}
            yield _event("error", {"error": err})
            return
        await pause(script.chunk_delay_s)
        delta = {"type": "text_delta", "text": piece}
        yield _event("content_block_delta", {"index": 0, "delta": delta})
    yield _event("content_block_stop", {"index": 0})
    yield _event(
        "message_delta",
        {
            "delta": {"stop_reason": script.finish_reason or "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": script.completion()},
        },
    )
    yield _event("message_stop", {})


def _invalid(body: Any) -> str:
    """What the real API would refuse in this body, or ""."""
    if not isinstance(body, dict):
        return "body must be a JSON object"
    if not body.get("model"):
        return "model: Field required"
    if not isinstance(body.get("max_tokens"), int):
        return "max_tokens: Field required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    last = None
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        if role == last:
            return "messages: roles must alternate between 'user' and 'assistant'"
        last = role
    if "system" in body and not isinstance(body["system"], str | list):
        return "system: Input should be a valid string"
    return ""


def build_app(state: FakeState) -> Starlette:
    async def messages(request: Request) -> Response:
        record, body = await state.record(request)
        script = state.current()
        await pause(script.response_delay_s)
        if failure := state.take_failure():
            record.outcome = "failed"
            return error_response(
                failure.fail_status, failure.error_message, retry_headers(failure)
            )
        key = request.headers.get("x-api-key", "")
        if not key or (script.expected_key is not None and key != script.expected_key):
            record.outcome = "rejected"
            return error_response(401, "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            record.outcome = "rejected"
            return error_response(400, "anthropic-version: header is required")
        if problem := _invalid(body):
            record.outcome = "rejected"
            return error_response(400, problem)
        model = str(body["model"])
        if not body.get("stream"):
            record.outcome = "completed"
            return JSONResponse(
                {
                    "id": "msg_fake",
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [{"type": "text", "text": "".join(script.pieces())}],
                    "stop_reason": script.finish_reason or "end_turn",
                    "stop_sequence": None,
                    "usage": _usage(script, script.completion()),
                }
            )
        return StreamingResponse(
            paced(record, _stream(record, script, model)),
            media_type="text/event-stream",
        )

    return Starlette(
        routes=[Route("/v1/messages", messages, methods=["POST"]), *control_routes(state)]
    )


def anthropic_fake() -> RunningFake:
    """A fresh fake, not yet started (use it as a context manager)."""
    state = FakeState()
    return RunningFake(build_app(state), state)


if __name__ == "__main__":
    cli(build_app, "Fake Anthropic Messages API upstream for tests.")
