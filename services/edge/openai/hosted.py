"""Hosted models through the engine's `Generate` stream: chat and text completions.

Both endpoints share this flow; they differ only in how the request becomes a `GenerateRequest`
and how text is wrapped (`ChatShape` / `CompletionShape`).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from services.edge.backends import Backends
from services.edge.errors import APIError, from_grpc
from services.edge.governance import REFUSALS, Admission, Bounds, admit
from services.edge.openai.protocol import ChatCompletionRequest, CompletionRequest
from services.edge.targets import Target
from services.pb.engine.v1 import engine_pb2

# A chat template's overhead in tokens, used only to bound the reservation from above (a token is
# at least one byte of text, so bytes bound the rest): per message (role markers, separators),
# and once per request (a default system prompt the template adds, the assistant header).
TEMPLATE_OVERHEAD_TOKENS = 16
TEMPLATE_FIXED_TOKENS = 96


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


def completion_bound(limit: int | None, model: engine_pb2.ModelInfo) -> int:
    """The most completion tokens a request can produce: its own cap, else the model's."""
    bound = limit or model.default_max_tokens or model.context_length
    return min(bound, model.context_length) if model.context_length else bound


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

    def bounds(self, target: Target) -> Bounds:
        size = sum(len(m.text().encode()) + TEMPLATE_OVERHEAD_TOKENS for m in self.req.messages)
        return Bounds(
            size + TEMPLATE_FIXED_TOKENS, completion_bound(self.req.token_limit(), target.info)
        )

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

    def bounds(self, target: Target) -> Bounds:
        return Bounds(
            len(self.req.prompt_text().encode()) + 1,
            completion_bound(self.req.token_limit(), target.info),
        )

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
    req = shape.req
    target = admission.target
    gen = shape.generate_request(target.public_name)
    gen.request_id = admission.request_id
    gen.max_context = admission.max_context
    try:
        # The first message is awaited before answering, so that a request the engine refuses
        # (context too long, queue full) gets a proper HTTP error instead of a broken stream;
        # an engine down or full before it is replaced by another (services.edge.engines).
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
        return StreamingResponse(
            _sse(shape, call, stream, first, admission, meta),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", **admission.headers},
        )
    return await _collect(shape, call, stream, first, admission, meta)


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
            parts.append(msg.text)
            last = msg
    except grpc.aio.AioRpcError as exc:
        await admission.settle("error")
        raise admission.error(from_grpc(exc, "engine")) from None
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
