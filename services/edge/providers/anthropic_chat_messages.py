"""OpenAI chat messages -> Anthropic Messages turns: system prompt, alternating turns, content
parts (text, images, PDF documents), tool calls and tool results.

The policy for each part is described in `services.edge.providers.anthropic_chat`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from services.edge.errors import APIError

IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_DATA_URL = re.compile(
    r"^data:(?P<type>[\w.+-]+/[\w.+-]+)(?P<params>(?:;[^,;]*)*),(?P<data>.*)$", re.S
)


def unsupported(param: str, message: str) -> APIError:
    return APIError(400, message, param=param, code="unsupported_parameter")


def invalid(param: str, message: str) -> APIError:
    return APIError(400, message, param=param, code="invalid_value")


def conversation(messages: Any) -> tuple[Any, list[dict[str, Any]]]:
    """(system, alternating user/assistant turns with content blocks)."""
    if not isinstance(messages, list) or not messages:
        raise invalid("messages", "messages must be a non-empty array.")
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        p = f"messages[{i}]"
        if not isinstance(message, dict):
            raise invalid(p, "Each message must be an object.")
        role = message.get("role")
        if role in ("system", "developer"):
            check_keys(message, p, ("role", "content", "name"))
            system.extend(_text_blocks(message.get("content"), f"{p}.content"))
        elif role == "user":
            check_keys(message, p, ("role", "content", "name"))
            _append(turns, "user", _user_blocks(message.get("content"), f"{p}.content"))
        elif role == "assistant":
            _append(turns, "assistant", _assistant_blocks(message, p))
        elif role == "tool":
            check_keys(message, p, ("role", "content", "tool_call_id"))
            _append(turns, "user", [_tool_result(message, p)])
        elif role == "function":
            raise unsupported(
                f"{p}.role", "Messages with role 'function' are deprecated; use role 'tool'."
            )
        else:
            raise invalid(f"{p}.role", f"Unknown message role: {role!r}.")
    if not turns:
        raise invalid("messages", "Anthropic models need at least one user message.")
    for turn in turns:
        if turn["role"] == "user":
            # The API wants a turn's tool results before anything else in it.
            blocks = turn["content"]
            turn["content"] = [b for b in blocks if b["type"] == "tool_result"] + [
                b for b in blocks if b["type"] != "tool_result"
            ]
        if len(turn["content"]) == 1 and set(turn["content"][0]) == {"type", "text"}:
            turn["content"] = turn["content"][0]["text"]
    return _system(system), turns


def _system(blocks: list[dict[str, Any]]) -> Any:
    if not blocks:
        return None
    if all(set(b) == {"type", "text"} for b in blocks):
        return "\n\n".join(b["text"] for b in blocks)
    return blocks


def check_keys(obj: dict[str, Any], p: str, allowed: tuple[str, ...]) -> None:
    for key in obj:
        if key not in allowed:
            raise unsupported(f"{p}.{key}", f"Unrecognized field {key!r} in {p}.")


def _append(turns: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    if not blocks and role == "assistant":
        return  # An empty assistant message says nothing; the API refuses empty turns.
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"].extend(blocks)
    else:
        turns.append({"role": role, "content": list(blocks)})


def _text_part(part: dict[str, Any], p: str) -> dict[str, Any]:
    check_keys(part, p, ("type", "text", "cache_control"))
    if not isinstance(part.get("text"), str):
        raise invalid(f"{p}.text", "A text part needs a string 'text'.")
    block = {"type": "text", "text": part["text"]}
    if part.get("cache_control") is not None:
        block["cache_control"] = part["cache_control"]
    return block


def _text_blocks(content: Any, p: str, *, refusal: bool = False) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise invalid(p, "content must be a string or an array of text parts.")
    blocks = []
    for j, part in enumerate(content):
        pp = f"{p}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            blocks.append(_text_part(part, pp))
        elif kind == "refusal" and refusal:
            check_keys(part, pp, ("type", "refusal"))
            blocks.append({"type": "text", "text": str(part.get("refusal") or "")})
        else:
            raise invalid(f"{pp}.type", f"Content part type {kind!r} is not allowed here.")
    return blocks


def _user_blocks(content: Any, p: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise invalid(p, "content must be a string or an array of content parts.")
    blocks = []
    for j, part in enumerate(content):
        pp = f"{p}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            blocks.append(_text_part(part, pp))
        elif kind == "image_url":
            blocks.append(_image(part, pp))
        elif kind == "file":
            blocks.append(_document(part, pp))
        elif kind == "input_audio":
            raise unsupported(pp, "Anthropic models take no audio input (input_audio parts).")
        else:
            raise invalid(f"{pp}.type", f"Unknown content part type {kind!r}.")
    return blocks


def _with_cache_control(block: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    if part.get("cache_control") is not None:
        block["cache_control"] = part["cache_control"]
    return block


def _image(part: dict[str, Any], p: str) -> dict[str, Any]:
    check_keys(part, p, ("type", "image_url", "cache_control"))
    image = part.get("image_url")
    if not isinstance(image, dict) or not isinstance(image.get("url"), str):
        raise invalid(f"{p}.image_url.url", "An image_url part needs image_url.url.")
    check_keys(image, f"{p}.image_url", ("url", "detail"))
    url = image["url"]
    if url.startswith(("http://", "https://")):
        return _with_cache_control({"type": "image", "source": {"type": "url", "url": url}}, part)
    media_type, data = _data_url(url, f"{p}.image_url.url")
    if media_type not in IMAGE_TYPES:
        raise invalid(
            f"{p}.image_url.url",
            f"Image type {media_type!r} is not supported: use image/jpeg, image/png, image/gif "
            "or image/webp.",
        )
    source = {"type": "base64", "media_type": media_type, "data": data}
    return _with_cache_control({"type": "image", "source": source}, part)


def _data_url(url: str, p: str) -> tuple[str, str]:
    """(media type, base64 data) of a `data:<type>;base64,<data>` URL."""
    match = _DATA_URL.match(url)
    if not match or ";base64" not in match["params"].lower():
        raise invalid(p, "Expected an http(s) URL or a base64 data URL (data:<type>;base64,...).")
    data = match["data"]
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise invalid(p, "The data URL does not hold valid base64.") from None
    return match["type"].lower(), data


def _document(part: dict[str, Any], p: str) -> dict[str, Any]:
    check_keys(part, p, ("type", "file", "cache_control"))
    file = part.get("file")
    if not isinstance(file, dict):
        raise invalid(f"{p}.file", "A file part needs a 'file' object.")
    check_keys(file, f"{p}.file", ("file_data", "file_id", "filename"))
    if file.get("file_id") is not None:
        raise unsupported(
            f"{p}.file.file_id", "Uploaded files (file_id) cannot be passed to Anthropic models."
        )
    data = file.get("file_data")
    if not isinstance(data, str):
        raise invalid(f"{p}.file.file_data", "A file part needs file_data (base64 PDF).")
    if data.startswith("data:"):
        media_type, data = _data_url(data, f"{p}.file.file_data")
    else:
        try:
            head = base64.b64decode(data[:12], validate=True)
        except (binascii.Error, ValueError):
            raise invalid(f"{p}.file.file_data", "file_data is not valid base64.") from None
        media_type = "application/pdf" if head.startswith(b"%PDF") else "unknown"
    if media_type != "application/pdf":
        raise unsupported(
            f"{p}.file.file_data", "Only PDF files can be passed to Anthropic models."
        )
    block: dict[str, Any] = {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": data},
    }
    if isinstance(file.get("filename"), str) and file["filename"]:
        block["title"] = file["filename"]
    return _with_cache_control(block, part)


def _assistant_blocks(message: dict[str, Any], p: str) -> list[dict[str, Any]]:
    allowed = ("role", "content", "name", "tool_calls", "refusal", "audio", "function_call")
    check_keys(message, p, (*allowed, "annotations"))
    for name in ("audio", "function_call"):
        if message.get(name) is not None:
            raise unsupported(f"{p}.{name}", f"Assistant {name} has no Anthropic equivalent.")
    if message.get("annotations"):
        raise unsupported(f"{p}.annotations", "Annotations have no Anthropic equivalent.")
    blocks: list[dict[str, Any]] = []
    content = message.get("content")
    if content is not None:
        blocks = _text_blocks(content, f"{p}.content", refusal=True)
    if isinstance(message.get("refusal"), str) and message["refusal"]:
        blocks.append({"type": "text", "text": message["refusal"]})
    # The API refuses empty text blocks; an empty string beside tool calls says nothing.
    blocks = [b for b in blocks if b.get("text") != ""]
    calls = message.get("tool_calls")
    if calls is not None and not isinstance(calls, list):
        raise invalid(f"{p}.tool_calls", "tool_calls must be an array.")
    for j, call in enumerate(calls or []):
        blocks.append(_tool_use(call, f"{p}.tool_calls[{j}]"))
    return blocks


def _tool_use(call: Any, p: str) -> dict[str, Any]:
    if not isinstance(call, dict):
        raise invalid(p, "Each tool call must be an object.")
    check_keys(call, p, ("id", "type", "function"))
    if call.get("type", "function") != "function":
        raise unsupported(f"{p}.type", "Only function tool calls can be sent to Anthropic models.")
    fn = call.get("function")
    if not isinstance(call.get("id"), str) or not call["id"]:
        raise invalid(f"{p}.id", "A tool call needs an id.")
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise invalid(f"{p}.function.name", "A tool call needs function.name.")
    check_keys(fn, f"{p}.function", ("name", "arguments"))
    arguments = fn.get("arguments")
    if arguments is None or arguments == "":
        parsed: Any = {}  # A call without arguments; some clients send "" for it.
    else:
        try:
            parsed = json.loads(arguments) if isinstance(arguments, str) else None
        except (ValueError, RecursionError):
            parsed = None
        if not isinstance(parsed, dict):
            raise invalid(
                f"{p}.function.arguments", "function.arguments must be a JSON object string."
            )
    return {"type": "tool_use", "id": call["id"], "name": fn["name"], "input": parsed}


def _tool_result(message: dict[str, Any], p: str) -> dict[str, Any]:
    tool_call_id = message.get("tool_call_id")
    if not isinstance(tool_call_id, str) or not tool_call_id:
        raise invalid(f"{p}.tool_call_id", "A tool message needs tool_call_id.")
    content = message.get("content")
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_call_id}
    if isinstance(content, str):
        block["content"] = content
    else:
        block["content"] = _text_blocks(content, f"{p}.content")
    return block
