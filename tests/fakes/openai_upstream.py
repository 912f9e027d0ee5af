"""A loopback stand-in for OpenAI's API, scripted through the control API of `tests.fakes.harness`:
`POST /v1/chat/completions` (streaming and not; text, tool calls, `n` choices, logprobs),
`POST /v1/embeddings`, `GET /v1/models`, and the Responses API
(`tests.fakes.openai_responses`). Requests are checked roughly as the real API checks them
(`tests.fakes.openai_validation`) and refused with a 400 in OpenAI's error shape.

Chat answers: `Script.reply` (streamed as `Script.pieces()`), or `Script.tool_calls` (ids
`call_<random>`, finish_reason "tool_calls", content null unless `reply` is not empty) unless
the last message is a tool result, which is answered with `reply`. With `n`, every choice has the
same answer; usage counts the completion once per choice. With `logprobs`, each piece of text
gets a `logprobs.content` entry (token, logprob, bytes, and `top_logprobs` alternatives), in
streams too. Embeddings are unit vectors derived from a hash of each input (float32, so that
`base64` and `float` agree); usage counts `Script.prompt_tokens` per input.

In-process: ``with openai_fake() as fake: ... fake.url + "/v1"``. As a process:
``python -m tests.fakes.openai_upstream --port N`` (base URL ``http://127.0.0.1:N/v1``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
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
    fragments,
    paced,
    pause,
    random_id,
    retry_headers,
)
from tests.fakes.openai_responses import responses_routes
from tests.fakes.openai_validation import chat_problem, embedding_inputs, embeddings_problem

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


@dataclass
class _Answer:
    """What every choice says: text pieces, tool calls ({"name", "arguments"}), the finish."""

    text: list[str]
    calls: list[dict[str, str]]
    finish: str
    # Completion tokens per choice.
    tokens: int


def _answer(script: Script, body: dict[str, Any]) -> _Answer:
    last = body["messages"][-1]
    if script.tool_calls and last.get("role") != "tool":
        text = script.pieces() if script.reply else []
        calls = script.tool_calls
        units = len(text) + sum(len(fragments(c["arguments"])) for c in calls)
        return _Answer(text, calls, script.finish_reason or "tool_calls", script.completion(units))
    return _Answer(script.pieces(), [], script.finish_reason or "stop", script.completion())


def _usage(script: Script, completion: int) -> dict[str, Any]:
    # OpenAI's prompt_tokens include cached ones; the details say how many were cached.
    return {
        "prompt_tokens": script.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": script.prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": script.cached_tokens},
    }


def _token_logprobs(piece: str, position: int, top: int) -> dict[str, Any]:
    """A deterministic logprobs entry: the piece, then `top - 1` less likely alternatives."""
    logprob = -round(0.05 * (position % 7 + 1), 4)
    alternatives = [(piece, logprob)] + [(f"alt{a}", logprob - a) for a in range(1, top)]
    return {
        "token": piece,
        "logprob": logprob,
        "bytes": list(piece.encode()),
        "top_logprobs": [
            {"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in alternatives[:top]
        ],
    }


def _logprobs(body: dict[str, Any], pieces: list[str], start: int = 0) -> dict[str, Any] | None:
    if not body.get("logprobs"):
        return None
    top = int(body.get("top_logprobs") or 0)
    content = [_token_logprobs(p, start + k, top) for k, p in enumerate(pieces)]
    return {"content": content, "refusal": None}


def _completion(script: Script, body: dict[str, Any], model: str) -> dict[str, Any]:
    answer = _answer(script, body)
    n = int(body.get("n") or 1)
    choices = []
    for index in range(n):
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(answer.text) if answer.text or not answer.calls else None,
            "refusal": None,
            "annotations": [],
        }
        if answer.calls:
            message["tool_calls"] = [
                {"id": random_id("call_"), "type": "function", "function": dict(call)}
                for call in answer.calls
            ]
        choices.append(
            {
                "index": index,
                "message": message,
                "logprobs": _logprobs(body, answer.text),
                "finish_reason": answer.finish,
            }
        )
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": _usage(script, answer.tokens * n),
        "system_fingerprint": "fp_fake",
    }


def _deltas(answer: _Answer, body: dict[str, Any]) -> list[tuple[dict[str, Any], Any]]:
    """One choice's streamed (delta, logprobs) pairs after its role chunk."""
    steps: list[tuple[dict[str, Any], Any]] = [
        ({"content": piece}, _logprobs(body, [piece], k)) for k, piece in enumerate(answer.text)
    ]
    for index, call in enumerate(answer.calls):
        head = {
            "index": index,
            "id": random_id("call_"),
            "type": "function",
            "function": {"name": call["name"], "arguments": ""},
        }
        steps.append(({"tool_calls": [head]}, None))
        for fragment in fragments(call["arguments"]):
            part = {"index": index, "function": {"arguments": fragment}}
            steps.append(({"tool_calls": [part]}, None))
    return steps


async def _stream(
    record: Record, script: Script, body: dict[str, Any], model: str
) -> AsyncIterator[bytes]:
    created = int(time.time())
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    usage_null: dict[str, Any] = {"usage": None} if include_usage else {}
    answer = _answer(script, body)
    n = int(body.get("n") or 1)
    per_choice = [_deltas(answer, body) for _ in range(n)]

    def choice(index: int, delta: dict[str, Any], finish: str | None, lp: Any = None) -> Any:
        return {"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish}

    role = {"role": "assistant", "content": "" if answer.text or not answer.calls else None}
    for index in range(n):
        yield _chunk(model, created, choices=[choice(index, role, None)])
    for step in range(len(per_choice[0])):
        if script.drop_after_chunks is not None and step >= script.drop_after_chunks:
            raise DropConnection()
        if script.error_event_after_chunks is not None and step >= script.error_event_after_chunks:
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
        for index in range(n):
            delta, lp = per_choice[index][step]
            yield _chunk(model, created, choices=[choice(index, delta, None, lp)], **usage_null)
    for index in range(n):
        yield _chunk(model, created, choices=[choice(index, {}, answer.finish)], **usage_null)
    if include_usage:
        yield _chunk(model, created, choices=[], usage=_usage(script, answer.tokens * n))
    yield b"data: [DONE]\n\n"


def _vector(item: Any, dimensions: int) -> list[float]:
    """A unit vector derived from the input alone, rounded to float32 as OpenAI's are."""
    seed = hashlib.sha256(json.dumps(item).encode()).digest()
    raw: list[float] = []
    counter = 0
    while len(raw) < dimensions:
        block = hashlib.sha256(seed + counter.to_bytes(4, "little")).digest()
        raw.extend(int.from_bytes(block[i : i + 4], "little") / 2**31 - 1 for i in range(0, 32, 4))
        counter += 1
    raw = raw[:dimensions]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [struct.unpack("<f", struct.pack("<f", v / norm))[0] for v in raw]


def _embeddings(script: Script, body: dict[str, Any]) -> dict[str, Any]:
    inputs = embedding_inputs(body["input"])
    dimensions = int(body.get("dimensions") or script.embedding_dimensions)
    data = []
    for index, item in enumerate(inputs):
        vector = _vector(item, dimensions)
        embedding: Any = vector
        if body.get("encoding_format") == "base64":
            embedding = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = script.prompt_tokens * len(inputs)
    return {
        "object": "list",
        "data": data,
        "model": str(body["model"]),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def build_app(state: FakeState) -> Starlette:
    async def admit(request: Request) -> tuple[Record, Any, Script, Response | None]:
        """Records the request; the scripted failure or key refusal, if any, as a response."""
        record, body = await state.record(request)
        script = state.current()
        await pause(script.response_delay_s)
        if failure := state.take_failure():
            record.outcome = "failed"
            return (
                record,
                body,
                script,
                error_response(
                    failure.fail_status,
                    failure.error_message,
                    failure.error_code,
                    headers=retry_headers(failure),
                ),
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
            refusal = error_response(401, message, "invalid_api_key" if key else None)
            return record, body, script, refusal
        return record, body, script, None

    def bad_request(record: Record, problem: tuple[str, str | None]) -> Response:
        record.outcome = "rejected"
        return error_response(400, problem[0], None, problem[1])

    async def chat_completions(request: Request) -> Response:
        record, body, script, refusal = await admit(request)
        if refusal is not None:
            return refusal
        if problem := chat_problem(body):
            return bad_request(record, problem)
        model = str(body["model"])
        if not body.get("stream"):
            record.outcome = "completed"
            return JSONResponse(_completion(script, body, model))
        return StreamingResponse(
            paced(record, _stream(record, script, body, model)),
            media_type="text/event-stream",
        )

    async def embeddings(request: Request) -> Response:
        record, body, script, refusal = await admit(request)
        if refusal is not None:
            return refusal
        if problem := embeddings_problem(body):
            return bad_request(record, problem)
        record.outcome = "completed"
        return JSONResponse(_embeddings(script, body))

    async def models(request: Request) -> Response:
        record, _, script, refusal = await admit(request)
        if refusal is not None:
            return refusal
        record.outcome = "completed"
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "openai"} for m in script.models
        ]
        return JSONResponse({"object": "list", "data": data})

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            *responses_routes(state, admit, error_response),
            *control_routes(state),
        ]
    )


def openai_fake() -> RunningFake:
    """A fresh fake, not yet started (use it as a context manager)."""
    state = FakeState()
    return RunningFake(build_app(state), state)


if __name__ == "__main__":
    cli(build_app, "Fake OpenAI API upstream for tests.")
