"""Anthropic's Messages API for Anthropic SDK users: `POST /v1/messages` and
`POST /v1/messages/count_tokens`, governed like every other route.

The Sluice key is accepted as `x-api-key` (what the Anthropic SDK sends) or as a bearer token.
The body goes to the organization's Anthropic credential as sent, with the model name mapped
(`anthropic/claude-...` or a bare `claude-...` both name the provider's `claude-...`) and
`max_tokens` lowered where the organization's plan caps the context; `anthropic-version` and
`anthropic-beta` headers are passed on. The answer, or the event stream, comes back unchanged.
Errors are in Anthropic's shape (`services.edge.errors`). Other models (hosted, `openai/...`)
are a 400 pointing at `/v1/chat/completions`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from services.edge.backends import backends_of
from services.edge.body import json_object, read_body
from services.edge.errors import APIError
from services.edge.governance import Bounds, admit
from services.edge.openai.bounds import (
    FIXED_OVERHEAD_TOKENS,
    MESSAGE_OVERHEAD_TOKENS,
    TOOL_OVERHEAD_TOKENS,
)
from services.edge.providers import anthropic
from services.edge.providers.base import SSEEvent, as_dict, dump, load_event
from services.edge.providers.catalog import ANTHROPIC
from services.edge.relay import relay
from services.edge.targets import Target
from services.edge.upstream import SSE_HEADERS, account, guarded, provider_key

PREFIX = ANTHROPIC + "/"


def anthropic_model(body: dict[str, Any]) -> str:
    """The provider's model name the body asks for (see the module doc)."""
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise APIError(400, "model: Field required", param="model")
    name = model.removeprefix(PREFIX)
    if "/" in name or not name.startswith("claude"):
        raise APIError(
            400,
            f"The model '{model}' is not an Anthropic model: /v1/messages serves "
            "anthropic/<model>; use /v1/chat/completions for other models.",
            param="model",
            code="model_not_supported",
        )
    return name


def messages_prompt_bound(body: dict[str, Any], raw_size: int, image_tokens: int) -> int | None:
    """Prompt tokens a Messages body can cost at most, bounded as for chat
    (`services.edge.openai.bounds`): bytes, framing allowances, each image at the model's
    maximum instead of its base64 bytes, and the whole context when a document is attached."""
    size = raw_size + FIXED_OVERHEAD_TOKENS
    messages = body.get("messages")
    tools = body.get("tools")
    if isinstance(tools, list):
        size += TOOL_OVERHEAD_TOKENS * len(tools)
    if not isinstance(messages, list):
        return size
    size += MESSAGE_OVERHEAD_TOKENS * len(messages)
    for block in _blocks(messages):
        if block.get("type") == "image":
            source = block.get("source")
            if isinstance(source, dict) and isinstance(source.get("data"), str):
                size -= len(source["data"].encode())
            size += image_tokens
        elif block.get("type") == "document":
            return None
    return max(size, 1)


def _blocks(messages: list[Any]) -> list[dict[str, Any]]:
    """Content blocks of every message, with those nested in tool results."""
    out: list[dict[str, Any]] = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        for block in content if isinstance(content, list) else ():
            if not isinstance(block, dict):
                continue
            out.append(block)
            nested = block.get("content") if block.get("type") == "tool_result" else None
            if isinstance(nested, list):
                out.extend(b for b in nested if isinstance(b, dict))
    return out


def _check(body: dict[str, Any]) -> int:
    """The checks governance needs before any hop; the provider validates the rest."""
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise APIError(400, "max_tokens: Field required (a positive integer)", param="max_tokens")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "messages: at least one message is required", param="messages")
    return max_tokens


async def messages(request: Request) -> Response:
    raw = await read_body(request)
    body = json_object(raw)
    model = anthropic_model(body)
    max_tokens = _check(body)
    backends = backends_of(request)

    def of(target: Target) -> Bounds:
        assert target.upstream is not None
        images = backends.catalog.image_tokens(target.upstream)
        prompt = messages_prompt_bound(body, len(raw), images)
        return Bounds(target.info.context_length if prompt is None else prompt, max_tokens)

    admission = await admit(backends, request, PREFIX + model, of, x_api_key=True)
    forward = anthropic.forward_messages_body(body, model, admission.completion_cap(max_tokens))
    provider = backends.providers[ANTHROPIC]
    key = await provider_key(backends, admission)
    headers = anthropic.version_headers(dict(request.headers))
    if not body.get("stream"):
        answer = await guarded(
            admission,
            provider.post_json(
                "/v1/messages",
                dump(forward),
                key,
                model=PREFIX + model,
                request_id=admission.request_id,
                headers=headers,
            ),
        )
        prompt, completion = usage_of(answer.get("usage"))
        account(admission, prompt, completion)
        if isinstance(reason := answer.get("stop_reason"), str):
            admission.finish_reasons = [reason]
        await admission.settle("ok")
        return JSONResponse(answer, headers=admission.headers)
    stream = await guarded(
        admission,
        provider.post_stream(
            "/v1/messages",
            dump(forward),
            key,
            model=PREFIX + model,
            request_id=admission.request_id,
            headers=headers,
        ),
    )
    return StreamingResponse(
        relay(admission, stream, MessagesCodec(), ANTHROPIC),
        media_type="text/event-stream",
        headers={**SSE_HEADERS, **admission.headers},
    )


async def count_tokens(request: Request) -> Response:
    """Anthropic's token count for a Messages body: authenticated, admitted and recorded like
    any request (rate limits and the ledger apply), reserving and charging no tokens."""
    body = json_object(await read_body(request))
    model = anthropic_model(body)
    backends = backends_of(request)
    admission = await admit(
        backends, request, PREFIX + model, lambda _: Bounds(0, 0), x_api_key=True
    )
    key = await provider_key(backends, admission)
    answer = await guarded(
        admission,
        backends.providers[ANTHROPIC].post_json(
            "/v1/messages/count_tokens",
            dump({**body, "model": model}),
            key,
            model=PREFIX + model,
            request_id=admission.request_id,
            headers=anthropic.version_headers(dict(request.headers)),
        ),
    )
    await admission.settle("ok")
    return JSONResponse(answer, headers=admission.headers)


def usage_of(usage: Any) -> tuple[int, int]:
    """(prompt, completion) tokens of a Messages usage object: the prompt includes cached
    tokens read and written, which the provider bills too."""
    if not isinstance(usage, dict):
        return 0, 0
    parts = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    return sum(int(usage.get(p) or 0) for p in parts), int(usage.get("output_tokens") or 0)


@dataclass
class MessagesCodec:
    """A Messages stream relayed unchanged; usage read on the way; `message_stop` held back until
    the request is settled."""

    finished: bool = False
    prompt: int = 0
    completion: int | None = None
    pieces: int = 0
    # Anthropic's stop reason, for the request's trace.
    finish_reasons: list[str] = field(default_factory=list)
    _end: list[bytes] = field(default_factory=list)

    def frames(self, event: SSEEvent) -> list[bytes]:
        obj = load_event(event.data)
        kind = obj.get("type") or event.event
        frame = f"event: {event.event or kind}\ndata: {event.data}\n\n".encode()
        if kind == "message_start":
            self.prompt, _ = usage_of(as_dict(obj.get("message")).get("usage"))
        elif kind == "message_delta":
            if isinstance(reason := as_dict(obj.get("delta")).get("stop_reason"), str):
                self.finish_reasons = [reason]
            usage = obj.get("usage")
            if isinstance(usage, dict):
                prompt, completion = usage_of(usage)
                self.prompt = max(self.prompt, prompt)
                self.completion = completion
        elif kind == "content_block_delta":
            self.pieces += 1
        elif kind == "message_stop":
            self.finished = True
            self._end = [frame]
            return []
        return [frame]

    def closing(self) -> list[bytes]:
        return self._end

    def usage(self) -> tuple[int, int]:
        return self.prompt, self.pieces if self.completion is None else self.completion

    def error_frame(self, error: APIError) -> bytes:
        return b"event: error\ndata: " + dump(error.anthropic_body()) + b"\n\n"
