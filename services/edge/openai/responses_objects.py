"""The Responses API's objects as the translated models answer them: output items, usage and the
`response` object, from the chat path's `chat.completion` (`completion_to_response`). The field
policy is `services.edge.openai.responses_translate`'s."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

# A new id for an output item: "msg_..." or "fc_...". Tests pass a deterministic one.
IdFactory = Callable[[str], str]


def random_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


def status_of(finish_reason: Any) -> tuple[str, str | None]:
    """(response status, incomplete reason) for a chat finish_reason."""
    if finish_reason == "length":
        return "incomplete", "max_output_tokens"
    if finish_reason == "content_filter":
        return "incomplete", "content_filter"
    return "completed", None


def usage_object(usage: Any) -> dict[str, Any]:
    """A chat usage object as the Responses API reports it."""
    usage = usage if isinstance(usage, dict) else {}
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    details = usage.get("prompt_tokens_details")
    cached = int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
    # Anthropic reports the prompt tokens written to its cache (part of prompt_tokens).
    written = int(usage.get("cache_creation_input_tokens") or 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": written},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def message_item(item_id: str, status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "content": content,
        "role": "assistant",
    }


def call_item(item_id: str, status: str, call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "arguments": arguments,
        "call_id": call_id,
        "name": name,
    }


def response_object(
    body: dict[str, Any],
    *,
    response_id: str,
    created_at: int,
    model: str,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    incomplete_reason: str | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A `response` object: what was produced, and the request's settings echoed as OpenAI
    echoes them (its defaults where the request left a field out)."""
    reasoning = body.get("reasoning")
    reasoning = reasoning if isinstance(reasoning, dict) else {}
    text = body.get("text")
    text = text if isinstance(text, dict) else {}
    out: dict[str, Any] = {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "error": error,
        "incomplete_details": {"reason": incomplete_reason} if incomplete_reason else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": body.get("max_tool_calls"),
        "model": model,
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls") is not False,
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": None},
        "service_tier": "default",
        "store": body.get("store") is not False,
        "temperature": 1.0 if body.get("temperature") is None else body["temperature"],
        "text": {"format": text.get("format") or {"type": "text"}, "verbosity": "medium"},
        "tool_choice": body.get("tool_choice") or "auto",
        "tools": body.get("tools") or [],
        "top_logprobs": 0,
        "top_p": 1.0 if body.get("top_p") is None else body["top_p"],
        "truncation": "disabled",
        "usage": usage,
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }
    for name in ("safety_identifier", "prompt_cache_key"):
        if body.get(name) is not None:
            out[name] = body[name]
    return out


def completion_to_response(
    completion: dict[str, Any],
    body: dict[str, Any],
    *,
    response_id: str,
    created_at: int,
    new_id: IdFactory = random_id,
) -> dict[str, Any]:
    """A `chat.completion` (the chat path's answer) -> the `response` object of `body`."""
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    status, reason = status_of(choice.get("finish_reason"))
    item_status = "incomplete" if status == "incomplete" else "completed"
    calls = message.get("tool_calls") or []
    content: list[dict[str, Any]] = []
    if message.get("content") or not calls:
        content.append(text_part(message.get("content") or ""))
    if message.get("refusal"):
        content.append({"type": "refusal", "refusal": message["refusal"]})
    output = [message_item(new_id("msg"), item_status, content)] if content else []
    for call in calls:
        function = call.get("function") or {}
        output.append(
            call_item(
                new_id("fc"),
                item_status,
                str(call.get("id") or ""),
                str(function.get("name") or ""),
                str(function.get("arguments") or ""),
            )
        )
    return response_object(
        body,
        response_id=response_id,
        created_at=created_at,
        model=str(completion.get("model") or body.get("model")),
        status=status,
        output=output,
        usage=usage_object(completion.get("usage")),
        incomplete_reason=reason,
    )
