"""The OpenAI-compatible backend: streamed `POST {base}/chat/completions`.

The request always streams, with `stream_options.include_usage`, so that the provider's own
token counts arrive in a last chunk (empty `choices`) before `data: [DONE]`.
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
    error_fields,
    load_event,
    sse_events,
    wire_float,
)
from services.engine.upstream.catalog import OPENAI, Limits, UpstreamModel
from services.engine.upstream.credentials import ProviderKey
from services.pb.engine.v1 import engine_pb2

FINISH_REASONS = {
    "stop": "stop",
    "length": "length",
    "content_filter": "content_filter",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
}


class OpenAIBackend(UpstreamBackend):
    provider = OPENAI

    def build(
        self,
        req: engine_pb2.GenerateRequest,
        model: UpstreamModel,
        limits: Limits,
        key: ProviderKey,
    ) -> UpstreamRequest:
        messages = chat_messages(req)
        s = req.sampling
        if s.HasField("top_k") and s.top_k != 0:
            raise InvalidArgument(
                "top_k is not supported by OpenAI models; use top_p instead.", param="top_k"
            )
        body: dict[str, Any] = {
            "model": model.model,
            "messages": [{"role": role, "content": content} for role, content in messages],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if s.HasField("temperature"):
            body["temperature"] = wire_float(s.temperature)
        if s.HasField("top_p"):
            body["top_p"] = wire_float(s.top_p)
        if s.HasField("seed"):
            body["seed"] = s.seed
        if req.stop:
            body["stop"] = list(req.stop)
        max_tokens = completion_cap(req, limits, None)
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        return UpstreamRequest(
            path="/chat/completions",
            headers={"authorization": f"Bearer {key.reveal()}"},
            body=body,
        )

    async def parse(self, response: httpx.Response, state: StreamState) -> AsyncIterator[str]:
        async for _, data in sse_events(response):
            if data.strip() == "[DONE]":
                return
            chunk = load_event(data)
            if chunk.get("error"):
                # An error in the middle of a stream; OpenAI sends it as a data line.
                message, code, _ = error_fields(chunk)
                raise UpstreamFailure("stream", message or "error event in the stream", code=code)
            usage = chunk.get("usage")
            if isinstance(usage, dict):
                state.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                state.completion_tokens = int(usage.get("completion_tokens") or 0)
            for choice in chunk.get("choices") or ():
                if choice.get("index", 0) != 0:
                    continue
                delta = choice.get("delta") or {}
                text = delta.get("content")
                if text:
                    yield str(text)
                reason = choice.get("finish_reason")
                if reason:
                    state.finish_reason = FINISH_REASONS.get(reason, "stop")
