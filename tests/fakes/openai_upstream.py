"""A loopback stand-in for OpenAI's `POST /v1/chat/completions` (streaming and not), scripted
through the control API of `tests.fakes.harness`.

In-process: ``with openai_fake() as fake: ... fake.url + "/v1"``. As a process:
``python -m tests.fakes.openai_upstream --port N`` (base URL ``http://127.0.0.1:N/v1``).
"""

from __future__ import annotations

import json
import time
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

# status -> (error type, default code, default message), as OpenAI answers them.
ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Not allowed."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist."),
    422: ("invalid_request_error", None, "Unprocessable request."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests."),
    500: ("server_error", None, "The server had an error while processing your request."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}


def error_response(
    status: int,
    message: str = "",
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    err_type, default_code, default_message = ERRORS.get(status, ("server_error", None, "Error."))
    body = {
        "error": {
            "message": message or default_message,
            "type": err_type,
            "param": param,
            "code": code if code is not None else default_code,
        }
    }
    return JSONResponse(body, status_code=status, headers=headers)


def masked(key: str) -> str:
    return f"{key[:3]}{'*' * 10}{key[-4:]}" if len(key) > 8 else "***"


def _chunk(model: str, created: int, **fields: Any) -> bytes:
    payload = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_fake",
        **fields,
    }
    return f"data: {json.dumps(payload)}\n\n".encode()


def _usage(script: Script) -> dict[str, Any]:
    # OpenAI's prompt_tokens include cached ones; the details say how many were cached.
    return {
        "prompt_tokens": script.prompt_tokens,
        "completion_tokens": script.completion(),
        "total_tokens": script.prompt_tokens + script.completion(),
        "prompt_tokens_details": {"cached_tokens": script.cached_tokens},
    }


async def _stream(
    record: Record, script: Script, model: str, include_usage: bool
) -> AsyncIterator[bytes]:
    created = int(time.time())
    usage_null: dict[str, Any] = {"usage": None} if include_usage else {}

    def choice(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    yield _chunk(model, created, choices=[choice({"role": "assistant", "content": ""}, None)])
    for i, piece in enumerate(script.pieces()):
        if script.drop_after_chunks is not None and i >= script.drop_after_chunks:
            raise DropConnection()
        if script.error_event_after_chunks is not None and i >= script.error_event_after_chunks:
            record.outcome = "error_event"
            err = {
                "message": script.error_message or "The server had an error.",
                "type": "server_error",
                "param": None,
                "code": None,
            }
            yield f"data: {json.dumps({'error': err})}\n\n".encode()
            return
        await pause(script.chunk_delay_s)
        yield _chunk(model, created, choices=[choice({"content": piece}, None)], **usage_null)
    yield _chunk(model, created, choices=[choice({}, script.finish_reason or "stop")], **usage_null)
    if include_usage:
        yield _chunk(model, created, choices=[], usage=_usage(script))
    yield b"data: [DONE]\n\n"


def build_app(state: FakeState) -> Starlette:
    async def chat_completions(request: Request) -> Response:
        record, body = await state.record(request)
        script = state.current()
        await pause(script.response_delay_s)
        if failure := state.take_failure():
            record.outcome = "failed"
            return error_response(
                failure.fail_status,
                failure.error_message,
                failure.error_code,
                headers=retry_headers(failure),
            )
        auth = request.headers.get("authorization", "")
        key = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else ""
        if not key or (script.expected_key is not None and key != script.expected_key):
            record.outcome = "rejected"
            message = (
                f"Incorrect API key provided: {masked(key)}. You can find your API key at "
                "https://platform.openai.com/account/api-keys."
                if key
                else "You didn't provide an API key."
            )
            return error_response(401, message, "invalid_api_key" if key else None)
        if not isinstance(body, dict) or not body.get("model") or not body.get("messages"):
            record.outcome = "rejected"
            return error_response(400, "'model' and 'messages' are required.", None, "messages")
        model = str(body["model"])
        if not body.get("stream"):
            record.outcome = "completed"
            return JSONResponse(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "".join(script.pieces())},
                            "logprobs": None,
                            "finish_reason": script.finish_reason or "stop",
                        }
                    ],
                    "usage": _usage(script),
                }
            )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(
            paced(record, _stream(record, script, model, include_usage)),
            media_type="text/event-stream",
        )

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            *control_routes(state),
        ]
    )


def openai_fake() -> RunningFake:
    """A fresh fake, not yet started (use it as a context manager)."""
    state = FakeState()
    return RunningFake(build_app(state), state)


if __name__ == "__main__":
    cli(build_app, "Fake OpenAI chat completions upstream for tests.")
