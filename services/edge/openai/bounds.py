"""Upper bounds on the tokens of a request for an upstream provider, read from its raw body.

Budgets must never be overshot, so a reservation bounds a request from above, never by guessing:

- text: a token is at least one byte, so the body's bytes bound every string in it (messages,
  tool definitions, schemas), plus an allowance per message and per tool for the provider's own
  framing, and a fixed one per request;
- images: each `image_url` part costs at most the model's documented maximum for one image
  (`Catalog.image_tokens`); a `data:` URL's bytes are counted as that instead of as text;
- audio (`input_audio`): its base64 bytes, already in the body, bound it (the providers' audio
  tokens run at tens per second, and the formats they take need far more bytes than that);
- files (`file` parts, PDFs): pages are not known before the provider reads them, so such a
  request is bounded by the model's whole context;
- completion: `max_completion_tokens` (or `max_tokens`), else the model's output cap, else its
  context; times `n`.

A Responses API body is bounded the same way (`responses_prompt_bound`): its bytes, an
allowance per input item and per tool, `input_image` parts at the model's maximum for one image
(a `data:` URL's bytes counted as that instead), `input_file` parts by the whole context; and
by the whole context too when the provider adds input Sluice cannot see: a
`previous_response_id`, `conversation` or `prompt` it keeps itself, or built-in tools (web and
file search, ...) whose results enter the input. The completion is `max_output_tokens`, else
the model's output cap, else its context.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from services.edge.errors import APIError

MESSAGE_OVERHEAD_TOKENS = 16
TOOL_OVERHEAD_TOKENS = 32
FIXED_OVERHEAD_TOKENS = 96


def content_parts(messages: Any) -> Iterator[dict[str, Any]]:
    """Every well-formed content part of every message."""
    if not isinstance(messages, list):
        return
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            yield from (part for part in content if isinstance(part, dict))


def _image_url(part: dict[str, Any]) -> str | None:
    value = part.get("image_url")
    if isinstance(value, dict):
        value = value.get("url")
    return value if isinstance(value, str) else None


def chat_prompt_bound(body: dict[str, Any], raw_size: int, image_tokens: int) -> int | None:
    """Prompt tokens a chat body can cost at most; None when only the context bounds it."""
    size = raw_size + FIXED_OVERHEAD_TOKENS
    messages = body.get("messages")
    if isinstance(messages, list):
        size += MESSAGE_OVERHEAD_TOKENS * len(messages)
    tools = body.get("tools")
    if isinstance(tools, list):
        size += TOOL_OVERHEAD_TOKENS * len(tools)
    for part in content_parts(messages):
        kind = part.get("type")
        if kind == "image_url":
            url = _image_url(part)
            if url is not None and url.startswith("data:"):
                size -= len(url.encode())
            size += image_tokens
        elif kind == "file":
            return None
    return max(size, 1)


def completion_limit(body: dict[str, Any]) -> int | None:
    """The client's own completion cap (`max_completion_tokens` supersedes `max_tokens`)."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is not None:
            return int(value)
    return None


def choices(body: dict[str, Any]) -> int:
    n = body.get("n")
    return 1 if n is None else int(n)


def embeddings_input_bound(value: Any) -> int:
    """Tokens an embeddings `input` can cost at most: bytes of its strings, count of its ids."""
    if isinstance(value, str):
        return len(value.encode()) + 1
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return sum(len(v.encode()) + 1 for v in value)
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return len(value)
        if all(
            isinstance(v, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in v)
            for v in value
        ):
            return sum(len(v) for v in value)
    raise APIError(
        400,
        "'input' must be a string, an array of strings, an array of token ids or an array of "
        "arrays of token ids, and must not be empty.",
        param="input",
        code="invalid_value",
    )


def check_chat_body(body: dict[str, Any]) -> None:
    """The fields governance reads, checked before any hop; the provider validates the rest."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        if "messages" not in body:
            raise APIError(
                400,
                "Missing required parameter: 'messages'.",
                param="messages",
                code="missing_required_parameter",
            )
        raise APIError(
            400, "'messages' must be a non-empty array.", param="messages", code="invalid_value"
        )
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise APIError(
                400,
                f"'messages[{i}]' must be an object.",
                param=f"messages[{i}]",
                code="invalid_value",
            )
    positive_int(body, "max_tokens")
    positive_int(body, "max_completion_tokens")
    positive_int(body, "n", maximum=128)
    if "stream" in body and not isinstance(body["stream"], bool | None):
        raise APIError(400, "'stream' must be a boolean.", param="stream", code="invalid_value")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise APIError(
            400, "'stream_options' must be an object.", param="stream_options", code="invalid_value"
        )


def positive_int(body: dict[str, Any], name: str, maximum: int = 2**31 - 1) -> None:
    value = body.get(name)
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= maximum:
        raise APIError(
            400,
            f"Invalid value for '{name}': expected an integer from 1 to {maximum}.",
            param=name,
            code="invalid_value",
        )


# Responses API tools whose calls the client runs itself: their results come back in the input.
CLIENT_TOOLS = frozenset({"function", "custom"})


def _responses_parts(items: Any) -> Iterator[dict[str, Any]]:
    """The content parts of Responses input items (messages and function call outputs)."""
    if not isinstance(items, list):
        return
    for item in items:
        if not isinstance(item, dict):
            continue
        for name in ("content", "output"):
            value = item.get(name)
            if isinstance(value, list):
                yield from (part for part in value if isinstance(part, dict))


def responses_prompt_bound(body: dict[str, Any], raw_size: int, image_tokens: int) -> int | None:
    """Input tokens a Responses API body can cost at most; None when only the context bounds
    it (see the module doc)."""
    if any(body.get(name) for name in ("previous_response_id", "conversation", "prompt")):
        return None
    tools = body.get("tools")
    tools = tools if isinstance(tools, list) else []
    if any(not isinstance(t, dict) or t.get("type") not in CLIENT_TOOLS for t in tools):
        return None
    size = raw_size + FIXED_OVERHEAD_TOKENS + TOOL_OVERHEAD_TOKENS * len(tools)
    items = body.get("input")
    size += MESSAGE_OVERHEAD_TOKENS * (len(items) if isinstance(items, list) else 1)
    for part in _responses_parts(items):
        kind = part.get("type")
        if kind == "input_image":
            url = part.get("image_url")
            if isinstance(url, str) and url.startswith("data:"):
                size -= len(url.encode())
            size += image_tokens
        elif kind == "input_file":
            return None
    return max(size, 1)


def check_responses_body(body: dict[str, Any]) -> None:
    """The fields governance reads in a Responses API body, checked before any hop; the
    provider validates the rest."""
    value = body.get("input")
    if value is not None and not isinstance(value, str | list):
        raise APIError(
            400,
            "'input' must be a string or an array of input items.",
            param="input",
            code="invalid_value",
        )
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise APIError(400, "'tools' must be an array.", param="tools", code="invalid_value")
    positive_int(body, "max_output_tokens")
    if "stream" in body and not isinstance(body["stream"], bool | None):
        raise APIError(400, "'stream' must be a boolean.", param="stream", code="invalid_value")
