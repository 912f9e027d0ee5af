"""Chat completions for upstream models: forwarded whole to an OpenAI-compatible provider, or
translated to and from Anthropic's Messages API; streamed answers relayed as they arrive.

The Anthropic path is three steps that the Responses API reuses as they are: `anthropic_call`
(the translation, before any hop), admission, and `run_anthropic` (the answer as data, see
`services.edge.openai.answers`)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from services.edge.backends import Backends
from services.edge.errors import APIError
from services.edge.governance import Admission, Bounds, admit
from services.edge.openai import bounds
from services.edge.openai.answers import ChatAnswer, is_error
from services.edge.providers import anthropic, anthropic_chat, openai
from services.edge.providers.base import SSEEvent, UpstreamFailure, as_dict, dump, load_event
from services.edge.providers.catalog import ANTHROPIC, UpstreamModel, parse
from services.edge.relay import relay
from services.edge.targets import Target
from services.edge.upstream import (
    SSE_HEADERS,
    account,
    data_frame,
    describe,
    finish_reasons,
    guarded,
    provider_key,
)

DONE_FRAME = b"data: [DONE]\n\n"


def chat_bounds(
    body: dict[str, Any], raw_size: int, backends: Backends, completion: int | None = None
) -> Callable[[Target], Bounds]:
    """The reservation of an upstream chat request (see `services.edge.openai.bounds`);
    `completion` is the cap actually sent where a translation chose it."""

    def of(target: Target) -> Bounds:
        info = target.info
        assert target.upstream is not None
        images = backends.catalog.image_tokens(target.upstream)
        prompt = bounds.chat_prompt_bound(body, raw_size, images)
        limit = (
            completion
            or bounds.completion_limit(body)
            or info.default_max_tokens
            or info.context_length
        )
        return Bounds(
            info.context_length if prompt is None else prompt, limit * bounds.choices(body)
        )

    return of


async def chat(backends: Backends, request: Request, body: dict[str, Any], raw: bytes) -> Response:
    """One OpenAI chat request for `openai/<model>` or `anthropic/<model>`."""
    bounds.check_chat_body(body)
    model = parse(body["model"])
    if model.provider == ANTHROPIC:
        return await _anthropic(backends, request, body, raw, model)
    return await _openai(backends, request, body, raw, model)


async def _openai(
    backends: Backends, request: Request, body: dict[str, Any], raw: bytes, model: UpstreamModel
) -> Response:
    admission = await admit(backends, request, model.name, chat_bounds(body, len(raw), backends))
    provider = backends.providers[model.provider]
    cap = admission.completion_cap(None)
    forward = openai.forward_body(body, model.model, completion_cap=cap, usage_in_stream=True)
    key = await provider_key(backends, admission)
    payload = dump(forward)
    rid = admission.request_id
    if not body.get("stream"):
        answer = await guarded(
            admission,
            provider.post_json("/chat/completions", payload, key, model=model.name, request_id=rid),
        )
        usage = as_dict(answer.get("usage"))
        account(admission, usage.get("prompt_tokens"), usage.get("completion_tokens"))
        describe(admission, answer)
        answer["model"] = openai.public_model(answer.get("model"), model.model)
        await admission.settle("ok")
        return JSONResponse(answer, headers=admission.headers)
    stream = await guarded(
        admission,
        provider.post_stream("/chat/completions", payload, key, model=model.name, request_id=rid),
    )
    codec = OpenAIChatCodec(model.model, openai.client_wants_usage(body))
    return StreamingResponse(
        relay(admission, stream, codec, model.provider),
        media_type="text/event-stream",
        headers={**SSE_HEADERS, **admission.headers},
    )


async def _anthropic(
    backends: Backends, request: Request, body: dict[str, Any], raw: bytes, model: UpstreamModel
) -> Response:
    # Translated before any hop, so that what Anthropic cannot express is a 400 up front.
    call = anthropic_call(backends, body, model)
    admission = await admit(
        backends, request, model.name, chat_bounds(body, len(raw), backends, completion=call.sent)
    )
    answer = await run_anthropic(
        backends,
        admission,
        call,
        stream=bool(body.get("stream")),
        include_usage=openai.client_wants_usage(body),
    )
    if answer.chunks is None:
        return JSONResponse(answer.completion, headers=admission.headers)
    return StreamingResponse(
        _sse(answer.chunks),
        media_type="text/event-stream",
        headers={**SSE_HEADERS, **admission.headers},
    )


@dataclass
class AnthropicCall:
    """An OpenAI chat request translated to a Messages request, before any hop."""

    model: UpstreamModel
    body: dict[str, Any]
    headers: dict[str, str]
    # The max_tokens the translation chose (the client's cap, else the default).
    sent: int


def anthropic_call(backends: Backends, body: dict[str, Any], model: UpstreamModel) -> AnthropicCall:
    """`body` (OpenAI chat) as a Messages request; a 400 for what cannot be translated."""
    info = backends.catalog.info(model)
    default = info.default_max_tokens or backends.settings.anthropic_default_max_tokens
    message_body, extra_headers = anthropic_chat.chat_to_messages(body, model.model, default)
    headers = {**anthropic.version_headers(), **extra_headers}
    return AnthropicCall(model, message_body, headers, int(message_body["max_tokens"]))


async def run_anthropic(
    backends: Backends,
    admission: Admission,
    call: AnthropicCall,
    *,
    stream: bool,
    include_usage: bool,
) -> ChatAnswer:
    """An admitted Anthropic request's answer as OpenAI chat objects (see `answers`)."""
    model = call.model
    message_body = dict(call.body)
    cap = admission.completion_cap(call.sent)
    if cap is not None:
        message_body["max_tokens"] = cap
    provider = backends.providers[model.provider]
    key = await provider_key(backends, admission)
    rid = admission.request_id
    completion_id = "chatcmpl-" + uuid.uuid4().hex
    created = int(time.time())
    if not stream:
        message_body.pop("stream", None)
        answer = await guarded(
            admission,
            provider.post_json(
                "/v1/messages",
                dump(message_body),
                key,
                model=model.name,
                request_id=rid,
                headers=call.headers,
            ),
        )
        completion = anthropic_chat.message_to_completion(
            answer, model=model.name, completion_id=completion_id, created=created
        )
        usage = completion.get("usage") or {}
        account(admission, usage.get("prompt_tokens"), usage.get("completion_tokens"))
        describe(admission, completion)
        await admission.settle("ok")
        return ChatAnswer(completion=completion)
    message_body["stream"] = True
    upstream = await guarded(
        admission,
        provider.post_stream(
            "/v1/messages",
            dump(message_body),
            key,
            model=model.name,
            request_id=rid,
            headers=call.headers,
        ),
    )
    translator = anthropic_chat.StreamTranslator(
        model=model.name,
        completion_id=completion_id,
        created=created,
        include_usage=include_usage,
    )
    codec = TranslatedCodec(translator)
    return ChatAnswer(chunks=relay(admission, upstream, codec, model.provider))


async def _sse(chunks: AsyncGenerator[dict[str, Any], None]) -> AsyncIterator[bytes]:
    """Chat chunk objects as the client's SSE stream."""
    async with aclosing(chunks):
        async for chunk in chunks:
            yield data_frame(chunk)
            if is_error(chunk):
                return
    yield DONE_FRAME


def _has_output(chunk: dict[str, Any]) -> bool:
    """Whether a chunk carries generated output (text, a refusal or a tool call's parts)."""
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if isinstance(delta, dict) and any(
            delta.get(k) for k in ("content", "tool_calls", "refusal", "function_call")
        ):
            return True
    return False


@dataclass
class OpenAIChatCodec:
    """An OpenAI stream relayed chunk by chunk, with the edits in `providers.openai`'s doc."""

    model: str
    client_usage: bool
    finished: bool = False
    prompt: int = 0
    completion: int | None = None
    pieces: int = 0
    finish_reasons: list[str] = field(default_factory=list)

    def frames(self, event: SSEEvent) -> list[bytes]:
        if event.data.strip() == openai.DONE:
            self.finished = True
            return []
        chunk = load_event(event.data)
        self.finish_reasons += finish_reasons(chunk)
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.prompt = int(usage.get("prompt_tokens") or 0)
            self.completion = int(usage.get("completion_tokens") or 0)
        if not self.client_usage and "usage" in chunk:
            if isinstance(usage, dict) and not chunk.get("choices"):
                return []  # the usage chunk only we asked for
            del chunk["usage"]
        self.pieces += _has_output(chunk)
        chunk["model"] = openai.public_model(chunk.get("model"), self.model)
        prefix = f"event: {event.event}\n".encode() if event.event else b""
        return [prefix + data_frame(chunk)]

    def closing(self) -> list[bytes]:
        return [DONE_FRAME]

    def usage(self) -> tuple[int, int]:
        return self.prompt, self.pieces if self.completion is None else self.completion

    def error_frame(self, error: APIError) -> bytes:
        return data_frame(error.body())


@dataclass
class TranslatedCodec:
    """An Anthropic stream as OpenAI chunk objects (`anthropic_chat.StreamTranslator`)."""

    translator: anthropic_chat.StreamTranslator
    finished: bool = False
    pieces: int = 0
    finish_reasons: list[str] = field(default_factory=list)
    _closing: list[dict[str, Any]] = field(default_factory=list)

    def frames(self, event: SSEEvent) -> list[dict[str, Any]]:
        try:
            chunks = self.translator.feed(load_event(event.data))
        except anthropic_chat.AnthropicStreamError as exc:
            raise UpstreamFailure("stream", exc.message) from None
        except (KeyError, TypeError, ValueError, AttributeError):
            raise UpstreamFailure("stream", "unexpected event in the stream") from None
        for chunk in chunks:
            self.finish_reasons += finish_reasons(chunk)
        if self.translator.finished:
            self.finished = True
            self._closing = chunks
            return []
        self.pieces += sum(1 for c in chunks if _has_output(c))
        return chunks

    def closing(self) -> list[dict[str, Any]]:
        return self._closing

    def usage(self) -> tuple[int, int]:
        usage = self.translator.usage()
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        # Before message_delta the count is message_start's placeholder: a broken stream is
        # billed at least the pieces it delivered.
        return prompt, completion if self.finished else max(completion, self.pieces)

    def error_frame(self, error: APIError) -> dict[str, Any]:
        return error.body()
