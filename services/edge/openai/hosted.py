"""Hosted models through the engine's `Generate` stream: chat and text completions.

Both endpoints share this flow; they differ only in how the request becomes a `GenerateRequest`
and how text is wrapped (`ChatShape` / `CompletionShape`).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import grpc
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from services.edge.backends import Backends
from services.edge.errors import APIError, from_grpc
from services.edge.governance import REFUSALS, Admission, Bounds, admit
from services.edge.openai import hosted_request
from services.edge.openai.answers import ChatAnswer, is_error
from services.edge.openai.hosted_choices import ChunkChoices, Collected
from services.edge.openai.protocol import ChatCompletionRequest, CompletionRequest
from services.edge.targets import Target
from services.pb.engine.v1 import engine_pb2


@dataclass
class ChatShape:
    """A chat request: its engine request, bounds, and `chat.completion` objects."""

    req: ChatCompletionRequest
    object_name = "chat.completion"
    chunk_name = "chat.completion.chunk"

    def generate_request(self, model: str) -> engine_pb2.GenerateRequest:
        return hosted_request.chat_request(self.req, model)

    def bounds(self, target: Target) -> Bounds:
        return hosted_request.chat_bounds(self.req, target)

    def collected(self) -> Collected:
        named = self.req.named_function() is not None
        return Collected(chat=True, logprobs=bool(self.req.logprobs), named_function=named)

    def chunk_choices(self) -> ChunkChoices:
        named = self.req.named_function() is not None
        return ChunkChoices(chat=True, logprobs=bool(self.req.logprobs), named_function=named)


@dataclass
class CompletionShape:
    """A legacy completions request: its engine request, bounds, `text_completion` objects."""

    req: CompletionRequest
    object_name = "text_completion"
    chunk_name = "text_completion"

    def generate_request(self, model: str) -> engine_pb2.GenerateRequest:
        return hosted_request.completion_request(self.req, model)

    def bounds(self, target: Target) -> Bounds:
        return hosted_request.completion_bounds(self.req, target)

    def collected(self) -> Collected:
        logprobs = self.req.logprobs is not None
        return Collected(chat=False, logprobs=logprobs, prompt_length=len(self.req.prompt_text()))

    def chunk_choices(self) -> ChunkChoices:
        logprobs = self.req.logprobs is not None
        return ChunkChoices(
            chat=False, logprobs=logprobs, prompt_length=len(self.req.prompt_text())
        )


Shape = ChatShape | CompletionShape


def usage_json(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


async def handle(backends: Backends, request: Request, shape: Shape) -> Response:
    """Runs one completion request for a hosted model end to end."""
    req = shape.req
    admission = await admit(backends, request, req.model, shape.bounds)
    if admission.target.upstream is not None:
        # Only the chat route sends upstream models elsewhere; the legacy endpoint has none.
        await admission.settle("rejected")
        raise admission.error(
            APIError(
                400,
                f"The model '{req.model}' is served through /v1/chat/completions only.",
                code="unsupported_model",
                param="model",
            )
        )
    return await generate(backends, shape, admission)


async def generate(backends: Backends, shape: Shape, admission: Admission) -> Response:
    """The engine's answer to an admitted hosted-model request, streamed or whole."""
    answer = await run(backends, shape, admission)
    if answer.chunks is not None:
        return StreamingResponse(
            _sse(answer.chunks),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", **admission.headers},
        )
    return JSONResponse(answer.completion, headers=admission.headers)


async def run(backends: Backends, shape: Shape, admission: Admission) -> ChatAnswer:
    """The engine's answer to an admitted hosted-model request as data (see `answers`)."""
    req = shape.req
    target = admission.target
    gen = shape.generate_request(target.public_name)
    gen.request_id = admission.request_id
    gen.max_context = admission.max_context
    try:
        # The first message is awaited before answering, so that a request the engine refuses
        # (context too long, queue full) gets a proper HTTP error instead of a broken stream;
        # an engine down or full before it is replaced by another (services.edge.engines).
        with admission.generating(gen):
            call, first = await backends.engines.generate(gen, backends.settings.request_timeout_s)
    except grpc.aio.AioRpcError as exc:
        refused = exc.code() in REFUSALS
        await admission.settle("rejected" if refused else "error")
        raise admission.error(from_grpc(exc, "engine")) from None
    except StopAsyncIteration:
        await admission.settle("error")
        raise admission.error(
            APIError(500, "The engine ended the stream early.", type="server_error")
        ) from None
    except BaseException:
        admission.settle("cancelled")
        raise
    stream = aiter(call)
    admission.observe(first)

    meta = {
        "id": ("chatcmpl-" if isinstance(shape, ChatShape) else "cmpl-") + uuid.uuid4().hex,
        "created": int(time.time()),
        "model": target.public_name,
        "system_fingerprint": target.system_fingerprint,
    }
    if req.stream:
        return ChatAnswer(chunks=_chunks(shape, call, stream, first, admission, meta))
    return ChatAnswer(completion=await _collect(shape, call, stream, first, admission, meta))


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
) -> dict[str, Any]:
    collected = shape.collected()
    collected.add(first)
    try:
        async for msg in stream:
            admission.observe(msg)
            collected.add(msg)
    except grpc.aio.AioRpcError as exc:
        await admission.settle("error")
        raise admission.error(from_grpc(exc, "engine")) from None
    except BaseException:
        call.cancel()
        admission.settle("cancelled")
        raise
    await admission.settle("ok")
    body = envelope(meta, {"object": shape.object_name, "choices": collected.payload()})
    body["usage"] = usage_json(admission.prompt_tokens, admission.completion_tokens)
    return body


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


async def _sse(chunks: AsyncGenerator[dict[str, Any], None]) -> AsyncIterator[bytes]:
    async with aclosing(chunks):
        async for chunk in chunks:
            yield _event(chunk)
            if is_error(chunk):
                return
    yield b"data: [DONE]\n\n"


async def _chunks(
    shape: Shape,
    call: Any,
    stream: AsyncIterator[engine_pb2.GenerateResponse],
    first: engine_pb2.GenerateResponse,
    admission: Admission,
    meta: dict[str, Any],
) -> AsyncGenerator[dict[str, Any], None]:
    include_usage = shape.req.include_usage()
    choices = shape.chunk_choices()

    def frame(payload: list[dict[str, Any]]) -> dict[str, Any]:
        out = envelope(meta, {"object": shape.chunk_name, "choices": payload})
        if include_usage:
            # OpenAI sends "usage": null on every chunk but the last when usage is asked for.
            out["usage"] = None
        return out

    status = "cancelled"
    try:
        msg: engine_pb2.GenerateResponse | None = first
        while msg is not None:
            for payload in choices.of(msg):
                yield frame(payload)
            if msg.HasField("usage"):
                break  # the stream's last message: every choice has finished
            msg = await anext(stream, None)
            if msg is not None:
                admission.observe(msg)
        status = "ok"
        # Settled before the client sees the end, so the ledger already holds the record.
        await admission.settle(status)
        if include_usage:
            last = envelope(meta, {"object": shape.chunk_name, "choices": []})
            last["usage"] = usage_json(admission.prompt_tokens, admission.completion_tokens)
            yield last
    except grpc.aio.AioRpcError as exc:
        status = "error"
        await admission.settle(status)
        yield from_grpc(exc, "engine").body()
    finally:
        if status == "cancelled":
            call.cancel()
            admission.settle(status)
