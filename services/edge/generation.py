"""Chat and text completions: one request through auth, metering and the engine's stream.

Both endpoints share this flow; they differ only in how the request becomes a `GenerateRequest`
and how text is wrapped (`ChatShape` / `CompletionShape`).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from services.edge.backends import Backends
from services.edge.errors import APIError, from_grpc, from_validation
from services.edge.governance import Admission, authenticate, record_refusal
from services.edge.protocol import ChatCompletionRequest, CompletionRequest
from services.pb.auth.v1 import auth_pb2
from services.pb.engine.v1 import engine_pb2

_M = TypeVar("_M", bound=BaseModel)

# Engine answers that refuse a request (recorded as "rejected") rather than fail it ("error").
REFUSALS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)

# Far above any prompt that fits the hosted models' context, far below what could hurt the edge.
MAX_BODY_BYTES = 8 * 1024 * 1024

# A chat template's overhead in tokens, used only to bound the reservation from above (a token is
# at least one byte of text, so bytes bound the rest): per message (role markers, separators),
# and once per request (a default system prompt the template adds, the assistant header).
TEMPLATE_OVERHEAD_TOKENS = 16
TEMPLATE_FIXED_TOKENS = 96


async def read_json_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object; 413 past MAX_BODY_BYTES, 400 when not an object."""
    size = 0
    chunks = []
    # Read incrementally so an oversized body is refused without being held in memory whole.
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise APIError(
                413,
                f"The request body is larger than {MAX_BODY_BYTES} bytes.",
                code="request_too_large",
            )
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise APIError(400, "The request body is not valid JSON.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_json")
    return body


async def parse_body(request: Request, schema: type[_M]) -> _M:
    body = await read_json_object(request)
    try:
        return schema.model_validate(body)
    except ValidationError as exc:
        raise from_validation(exc) from None


def public_model_name(info: engine_pb2.ModelInfo) -> str:
    """The resolved, pinned name: reusable as a `model` value that pins this exact export.

    Upstream models have no digest we could pin; they keep their plain name.
    """
    return f"{info.name}@{info.digest}" if info.digest else info.name


def system_fingerprint(info: engine_pb2.ModelInfo) -> str | None:
    if not info.digest:
        return None
    return "fp_" + info.digest.removeprefix("sha256:")[:12]


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
    return params


@dataclass
class ChatShape:
    """Wraps engine output as `chat.completion` / `chat.completion.chunk` objects."""

    req: ChatCompletionRequest

    def generate_request(self, model: str) -> engine_pb2.GenerateRequest:
        msgs = engine_pb2.Messages(
            messages=[
                engine_pb2.ChatMessage(role=m.role, content=m.text()) for m in self.req.messages
            ]
        )
        out = engine_pb2.GenerateRequest(
            model=model, messages=msgs, sampling=sampling(self.req), stop=self.req.stop_list()
        )
        if (limit := self.req.token_limit()) is not None:
            out.max_tokens = limit
        return out

    def prompt_bound(self) -> int:
        size = sum(len(m.text().encode()) + TEMPLATE_OVERHEAD_TOKENS for m in self.req.messages)
        return size + TEMPLATE_FIXED_TOKENS

    def full(self, text: str, finish: str) -> dict[str, Any]:
        return {
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
        }

    def chunk(self, text: str | None, finish: str | None, first: bool) -> dict[str, Any]:
        delta: dict[str, Any] = {}
        if first:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        return {
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }


@dataclass
class CompletionShape:
    """Wraps engine output as legacy `text_completion` objects."""

    req: CompletionRequest

    def generate_request(self, model: str) -> engine_pb2.GenerateRequest:
        out = engine_pb2.GenerateRequest(
            model=model,
            prompt=self.req.prompt_text(),
            sampling=sampling(self.req),
            stop=self.req.stop_list(),
        )
        if (limit := self.req.token_limit()) is not None:
            out.max_tokens = limit
        return out

    def prompt_bound(self) -> int:
        return len(self.req.prompt_text().encode()) + 1

    def full(self, text: str, finish: str) -> dict[str, Any]:
        return {
            "object": "text_completion",
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
        }

    def chunk(self, text: str | None, finish: str | None, first: bool) -> dict[str, Any]:
        return {
            "object": "text_completion",
            "choices": [
                {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            ],
        }


Shape = ChatShape | CompletionShape


def usage_json(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


async def handle(backends: Backends, request: Request, shape: Shape, timeout_s: float) -> Response:
    """Runs one completion request end to end and returns its HTTP response."""
    req = shape.req
    principal = await authenticate(backends, request, req.model)
    try:
        model = await backends.resolve_model(req.model, principal.org_id)
    except grpc.aio.AioRpcError as exc:
        if exc.code() in REFUSALS:
            record_refusal(backends, request, req.model, _principal_ids(principal))
        raise from_grpc(exc, "engine") from None

    limit = req.token_limit() or model.default_max_tokens or model.context_length
    completion_bound = min(limit, model.context_length)
    upper = min(shape.prompt_bound(), model.context_length) + completion_bound
    admission = await Admission.admit(backends, request, principal, model, upper)

    gen = shape.generate_request(public_model_name(model))
    gen.request_id = admission.request_id
    gen.org_id = principal.org_id
    gen.max_context = admission.max_context
    call = backends.engine.Generate(gen, timeout=timeout_s)
    stream = aiter(call)
    try:
        # The first message is awaited before answering, so that a request the engine refuses
        # (context too long, queue full) gets a proper HTTP error instead of a broken stream.
        first = await anext(stream)
    except grpc.aio.AioRpcError as exc:
        refused = exc.code() in REFUSALS
        await admission.settle("rejected" if refused else "error")
        raise _engine_error(exc, admission) from None
    except StopAsyncIteration:
        await admission.settle("error")
        raise APIError(
            500,
            "The engine ended the stream early.",
            type="server_error",
            headers=admission.headers,
        ) from None
    except BaseException:
        call.cancel()
        admission.settle("cancelled")
        raise
    admission.observe(first)
    if first.HasField("error"):
        await admission.settle("error")
        raise _stream_error(first.error, admission)

    meta = {
        "id": ("chatcmpl-" if isinstance(shape, ChatShape) else "cmpl-") + uuid.uuid4().hex,
        "created": int(time.time()),
        "model": public_model_name(model),
        "system_fingerprint": system_fingerprint(model),
    }
    if req.stream:
        return StreamingResponse(
            _sse(shape, call, stream, first, admission, meta),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", **admission.headers},
        )
    return await _collect(shape, call, stream, first, admission, meta)


def _principal_ids(principal: auth_pb2.Principal) -> dict[str, str]:
    return {
        "sluice-org-id": principal.org_id,
        "sluice-project-id": principal.project_id,
        "sluice-key-id": principal.key_id,
    }


def _engine_error(exc: grpc.aio.AioRpcError, admission: Admission) -> APIError:
    """The engine's failure as the client sees it, naming the request the ledger knows."""
    err = from_grpc(exc, "engine")
    err.headers.update(admission.headers)
    return err


def _stream_error(error: engine_pb2.StreamError, admission: Admission) -> APIError:
    """A failure the engine reported after output began (e.g. an upstream stream dropped)."""
    return APIError(
        error.http_status or 502,
        error.message or "The model's stream failed.",
        type=error.type or "server_error",
        code=error.code or None,
        headers=dict(admission.headers),
    )


def envelope(meta: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    """Orders a response object's fields as OpenAI does: id, object, created, model, ..."""
    return {
        "id": meta["id"],
        "object": payload["object"],
        "created": meta["created"],
        "model": meta["model"],
        "system_fingerprint": meta["system_fingerprint"],
        "choices": payload["choices"],
    }


async def _collect(
    shape: Shape,
    call: Any,
    stream: AsyncIterator[engine_pb2.GenerateResponse],
    first: engine_pb2.GenerateResponse,
    admission: Admission,
    meta: dict[str, Any],
) -> Response:
    parts = [first.text]
    last = first
    try:
        async for msg in stream:
            admission.observe(msg)
            if msg.HasField("error"):
                await admission.settle("error")
                raise _stream_error(msg.error, admission)
            parts.append(msg.text)
            last = msg
    except grpc.aio.AioRpcError as exc:
        await admission.settle("error")
        raise _engine_error(exc, admission) from None
    except APIError:
        raise
    except BaseException:
        call.cancel()
        admission.settle("cancelled")
        raise
    await admission.settle("ok")
    body = envelope(meta, shape.full("".join(parts), last.finish_reason or "stop"))
    body["usage"] = usage_json(admission.prompt_tokens, admission.completion_tokens)
    return JSONResponse(body, headers=admission.headers)


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


async def _sse(
    shape: Shape,
    call: Any,
    stream: AsyncIterator[engine_pb2.GenerateResponse],
    first: engine_pb2.GenerateResponse,
    admission: Admission,
    meta: dict[str, Any],
) -> AsyncIterator[bytes]:
    include_usage = shape.req.include_usage()
    chat = isinstance(shape, ChatShape)

    def frame(text: str | None, finish: str | None, first_chunk: bool) -> bytes:
        out = envelope(meta, shape.chunk(text, finish, first_chunk))
        if include_usage:
            # OpenAI sends "usage": null on every chunk but the last when usage is asked for.
            out["usage"] = None
        return _event(out)

    status = "cancelled"
    try:
        msg: engine_pb2.GenerateResponse | None = first
        sent_first = False
        while msg is not None:
            if msg.HasField("error"):
                # Output already went out: end the stream with the error; what was delivered
                # is billed.
                status = "error"
                await admission.settle(status)
                yield _event(_stream_error(msg.error, admission).body())
                return
            if msg.text or not sent_first:
                yield frame(msg.text, None, not sent_first)
                sent_first = True
            if msg.finish_reason:
                yield frame(None if chat else "", msg.finish_reason, False)
                break
            msg = await anext(stream, None)
            if msg is not None:
                admission.observe(msg)
        status = "ok"
        # Settled before the client sees the end, so the ledger already holds the record.
        await admission.settle(status)
        if include_usage:
            last = envelope(
                meta, {"object": shape.chunk(None, None, False)["object"], "choices": []}
            )
            last["usage"] = usage_json(admission.prompt_tokens, admission.completion_tokens)
            yield _event(last)
        yield b"data: [DONE]\n\n"
    except grpc.aio.AioRpcError as exc:
        status = "error"
        await admission.settle(status)
        yield _event(from_grpc(exc, "engine").body())
    finally:
        if status == "cancelled":
            call.cancel()
            admission.settle(status)
