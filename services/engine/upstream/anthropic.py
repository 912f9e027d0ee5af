"""The Anthropic backend: streamed `POST {base}/v1/messages` (Messages API, version 2023-06-01).

OpenAI-shaped chat requests are translated: system and developer messages become the `system`
prompt, consecutive turns of one role are merged (the API wants user and assistant to
alternate), `stop` becomes `stop_sequences`, and `max_tokens`, which Anthropic requires, gets an
operator default.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx

from services.common.errors import InvalidArgument
from services.engine.upstream.base import (
    StreamState,
    UpstreamBackend,
    UpstreamFailure,
    UpstreamRequest,
    chat_messages,
    completion_cap,
    load_event,
    sse_events,
    wire_float,
)
from services.engine.upstream.catalog import ANTHROPIC, Limits, UpstreamModel
from services.engine.upstream.credentials import ProviderKey
from services.pb.engine.v1 import engine_pb2

API_VERSION = "2023-06-01"
STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# The HTTP status each error type of the Messages API has outside a stream, so that an error
# event inside the stream is treated like the same error before it.
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def translate_messages(
    messages: list[tuple[str, str]],
) -> tuple[str, list[dict[str, str]]]:
    """(system prompt, alternating user/assistant turns) from OpenAI-style chat messages."""
    system: list[str] = []
    turns: list[dict[str, str]] = []
    for role, content in messages:
        if role in ("system", "developer"):
            system.append(content)
        elif role in ("user", "assistant"):
            if turns and turns[-1]["role"] == role:
                turns[-1]["content"] += "\n\n" + content
            else:
                turns.append({"role": role, "content": content})
        else:
            raise InvalidArgument(
                f"Anthropic models do not take messages with role '{role}'.", param="messages"
            )
    if not turns:
        raise InvalidArgument("Anthropic models need at least one user message.", param="messages")
    return "\n\n".join(system), turns


class AnthropicBackend(UpstreamBackend):
    provider = ANTHROPIC

    def __init__(self, *args: Any, default_max_tokens: int = 4096, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.default_max_tokens = default_max_tokens

    def build(
        self,
        req: engine_pb2.GenerateRequest,
        model: UpstreamModel,
        limits: Limits,
        key: ProviderKey,
    ) -> UpstreamRequest:
        system, turns = translate_messages(chat_messages(req))
        s = req.sampling
        if s.HasField("seed"):
            # Refused rather than dropped: a client that sets a seed expects repeatable output.
            raise InvalidArgument("seed is not supported by Anthropic models.", param="seed")
        default = self.default_max_tokens
        if limits.max_output_tokens:
            default = min(default, limits.max_output_tokens)
        body: dict[str, Any] = {
            "model": model.model,
            "max_tokens": completion_cap(req, limits, default),
            "messages": turns,
            "stream": True,
        }
        if system:
            body["system"] = system
        if req.stop:
            body["stop_sequences"] = list(req.stop)
        if s.HasField("temperature"):
            body["temperature"] = wire_float(s.temperature)
        if s.HasField("top_p"):
            body["top_p"] = wire_float(s.top_p)
        if s.HasField("top_k") and s.top_k > 0:
            body["top_k"] = s.top_k
        return UpstreamRequest(
            path="/v1/messages",
            headers={"x-api-key": key.reveal(), "anthropic-version": API_VERSION},
            body=body,
        )

    async def parse(self, response: httpx.Response, state: StreamState) -> AsyncIterator[str]:
        async for event, data in sse_events(response):
            obj = load_event(data)
            kind = obj.get("type") or event
            if kind == "content_block_delta":
                delta = obj.get("delta") or {}
                # Other delta types (tool input JSON, thinking) have no text for the client.
                if delta.get("type") == "text_delta" and delta.get("text"):
                    yield str(delta["text"])
            elif kind == "message_start":
                _read_usage((obj.get("message") or {}).get("usage"), state, start=True)
            elif kind == "message_delta":
                reason = (obj.get("delta") or {}).get("stop_reason")
                if reason:
                    state.finish_reason = STOP_REASONS.get(reason, "stop")
                _read_usage(obj.get("usage"), state, start=False)
            elif kind == "message_stop":
                return
            elif kind == "error":
                err = obj.get("error") or {}
                err_type = str(err.get("type") or "api_error")
                raise UpstreamFailure(
                    "http",
                    str(err.get("message") or err_type),
                    status=ERROR_STATUS.get(err_type, 500),
                )
            # ping, content_block_start/stop and event types added later carry nothing we need.


def _read_usage(usage: Any, state: StreamState, *, start: bool) -> None:
    """Prompt tokens include cached ones (billed by the provider too); counts are cumulative."""
    if not isinstance(usage, dict):
        return
    parts = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    if any(usage.get(p) is not None for p in parts):
        state.prompt_tokens = sum(int(usage.get(p) or 0) for p in parts)
    # message_start's output_tokens is a placeholder; message_delta has the real count.
    if not start and usage.get("output_tokens") is not None:
        state.completion_tokens = int(usage["output_tokens"])
