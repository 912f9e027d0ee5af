"""Chat completions for upstream models: forwarded whole to an OpenAI-compatible provider, or
translated to and from Anthropic's Messages API; streamed answers relayed as they arrive."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from services.edge.backends import Backends
from services.edge.errors import APIError
from services.edge.governance import Bounds, admit
from services.edge.openai import bounds
from services.edge.providers import anthropic, anthropic_chat, openai
from services.edge.providers.base import SSEEvent, UpstreamFailure, as_dict, dump, load_event
from services.edge.providers.catalog import ANTHROPIC, UpstreamModel, parse
from services.edge.relay import relay
from services.edge.targets import Target
from services.edge.upstream import SSE_HEADERS, account, data_frame, guarded, provider_key

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
    info = backends.catalog.info(model)
    default = info.default_max_tokens or backends.settings.anthropic_default_max_tokens
    # Translated before any hop, so that what Anthropic cannot express is a 400 up front.
    message_body, extra_headers = anthropic_chat.chat_to_messages(body, model.model, default)
    sent = int(message_body["max_tokens"])
    admission = await admit(
        backends, request, model.name, chat_bounds(body, len(raw), backends, completion=sent)
    )
    cap = admission.completion_cap(sent)
    if cap is not None:
        message_body["max_tokens"] = cap
    provider = backends.providers[model.provider]
    headers = {**anthropic.version_headers(), **extra_headers}
    key = await provider_key(backends, admission)
    rid = admission.request_id
    completion_id = "chatcmpl-" + uuid.uuid4().hex
    created = int(time.time())
    if not body.get("stream"):
        message_body.pop("stream", None)
        answer = await guarded(
            admission,
            provider.post_json(
                "/v1/messages",
                dump(message_body),
                key,
                model=model.name,
                request_id=rid,
                headers=headers,
            ),
        )
        completion = anthropic_chat.message_to_completion(
            answer, model=model.name, completion_id=completion_id, created=created
        )
        usage = completion.get("usage") or {}
        account(admission, usage.get("prompt_tokens"), usage.get("completion_tokens"))
        await admission.settle("ok")
        return JSONResponse(completion, headers=admission.headers)
    message_body["stream"] = True
    stream = await guarded(
        admission,
        provider.post_stream(
            "/v1/messages",
            dump(message_body),
            key,
            model=model.name,
            request_id=rid,
            headers=headers,
        ),
    )
    translator = anthropic_chat.StreamTranslator(
        model=model.name,
        completion_id=completion_id,
        created=created,
        include_usage=openai.client_wants_usage(body),
    )
    return StreamingResponse(
        relay(admission, stream, TranslatedCodec(translator), model.provider),
        media_type="text/event-stream",
        headers={**SSE_HEADERS, **admission.headers},
    )


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

    def frames(self, event: SSEEvent) -> list[bytes]:
        if event.data.strip() == openai.DONE:
            self.finished = True
            return []
        chunk = load_event(event.data)
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
    """An Anthropic stream as OpenAI chunks (`anthropic_chat.StreamTranslator`)."""

    translator: anthropic_chat.StreamTranslator
    finished: bool = False
    pieces: int = 0
    _closing: list[dict[str, Any]] = field(default_factory=list)

    def frames(self, event: SSEEvent) -> list[bytes]:
        try:
            chunks = self.translator.feed(load_event(event.data))
        except anthropic_chat.AnthropicStreamError as exc:
            raise UpstreamFailure("stream", exc.message) from None
        except (KeyError, TypeError, ValueError, AttributeError):
            raise UpstreamFailure("stream", "unexpected event in the stream") from None
        if self.translator.finished:
            self.finished = True
            self._closing = chunks
            return []
        self.pieces += sum(1 for c in chunks if _has_output(c))
        return [data_frame(c) for c in chunks]

    def closing(self) -> list[bytes]:
        return [*(data_frame(c) for c in self._closing), DONE_FRAME]

    def usage(self) -> tuple[int, int]:
        usage = self.translator.usage()
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        # Before message_delta the count is message_start's placeholder: a broken stream is
        # billed at least the pieces it delivered.
        return prompt, completion if self.finished else max(completion, self.pieces)

    def error_frame(self, error: APIError) -> bytes:
        return data_frame(error.body())
