"""What Anthropic's Messages API refuses with a 400, roughly as it does: the checks of the
Anthropic stand-in. `problem` answers the first problem's message (field paths in the API's
dotted style, e.g. ``messages.2.content.0``), or "" for a body the API would take.
"""

from __future__ import annotations

from typing import Any

IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
TOOL_CHOICES = ("auto", "any", "tool", "none")


def problem(body: Any, *, count_tokens: bool = False) -> str:
    """What the real API would refuse in this body, or ""."""
    if not isinstance(body, dict):
        return "body must be a JSON object"
    if not body.get("model"):
        return "model: Field required"
    if not count_tokens and not isinstance(body.get("max_tokens"), int):
        return "max_tokens: Field required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    last = None
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        if role == last:
            return "messages: roles must alternate between 'user' and 'assistant'"
        last = role
    if "system" in body and not isinstance(body["system"], str | list):
        return "system: Input should be a valid string"
    if isinstance(body.get("system"), list):
        for j, block in enumerate(body["system"]):
            if not isinstance(block, dict) or block.get("type") != "text":
                return f"system.{j}.type: Input should be 'text'"
    return (
        _content_problem(messages)
        or _pairing_problem(messages)
        or _tools_problem(body)
        or _options_problem(body)
    )


def _blocks(message: dict[str, Any]) -> list[Any]:
    content = message.get("content")
    return content if isinstance(content, list) else []


def _content_problem(messages: list[dict[str, Any]]) -> str:
    for i, m in enumerate(messages):
        content = m.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            return f"messages.{i}.content: Input should be a valid string or list"
        if not content and i < len(messages) - 1:
            return f"messages.{i}: all messages must have non-empty content"
        for j, block in enumerate(content):
            if found := _block_problem(block, m["role"], f"messages.{i}.content.{j}"):
                return found
    return ""


def _source_problem(source: Any, p: str, media_types: tuple[str, ...]) -> str:
    if not isinstance(source, dict):
        return f"{p}.source: Field required"
    kind = source.get("type")
    if kind == "base64":
        if source.get("media_type") not in media_types:
            allowed = ", ".join(f"'{t}'" for t in media_types)
            return f"{p}.source.media_type: Input should be {allowed}"
        if not isinstance(source.get("data"), str) or not source["data"]:
            return f"{p}.source.data: Field required"
        return ""
    if kind == "url":
        url = source.get("url")
        return (
            ""
            if isinstance(url, str) and url.startswith(("http://", "https://"))
            else (f"{p}.source.url: Input should be an http(s) URL")
        )
    if kind == "text" and "text/plain" in media_types:
        return "" if isinstance(source.get("data"), str) else f"{p}.source.data: Field required"
    return f"{p}.source.type: Input tag '{kind}' is not an accepted source type"


def _block_problem(block: Any, role: str, p: str) -> str:
    if not isinstance(block, dict):
        return f"{p}: Input should be an object"
    kind = block.get("type")
    if kind == "text":
        if not isinstance(block.get("text"), str):
            return f"{p}.text: Field required"
        return "" if block["text"] else f"{p}: text content blocks must be non-empty"
    if kind == "image":
        return _source_problem(block.get("source"), p, IMAGE_TYPES)
    if kind == "document":
        return _source_problem(block.get("source"), p, ("application/pdf", "text/plain"))
    if kind == "tool_use":
        if role != "assistant":
            return f"{p}: tool_use blocks may only appear in assistant messages"
        if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
            return f"{p}: tool_use blocks need an id and a name"
        return "" if isinstance(block.get("input"), dict) else f"{p}.input: Input should be a dict"
    if kind == "tool_result":
        if role != "user":
            return f"{p}: tool_result blocks may only appear in user messages"
        if not isinstance(block.get("tool_use_id"), str):
            return f"{p}.tool_use_id: Field required"
        content = block.get("content", "")
        if isinstance(content, list):
            for k, inner in enumerate(content):
                if not isinstance(inner, dict) or inner.get("type") not in ("text", "image"):
                    return f"{p}.content.{k}.type: Input should be 'text' or 'image'"
                if found := _block_problem(inner, role, f"{p}.content.{k}"):
                    return found
        elif not isinstance(content, str):
            return f"{p}.content: Input should be a valid string or list"
        return ""
    if kind in ("thinking", "redacted_thinking"):
        return "" if role == "assistant" else f"{p}: {kind} blocks belong to assistant messages"
    return f"{p}.type: Input tag '{kind}' is not an accepted block type"


def _pairing_problem(messages: list[dict[str, Any]]) -> str:
    """tool_result blocks answer the tool_use blocks of the assistant turn just before, all of
    them, first in their user turn."""
    for i, m in enumerate(messages):
        blocks = [b for b in _blocks(m) if isinstance(b, dict)]
        if m["role"] == "assistant":
            uses = [b["id"] for b in blocks if b.get("type") == "tool_use"]
            following = messages[i + 1] if i + 1 < len(messages) else None
            answered = {
                b.get("tool_use_id")
                for b in (_blocks(following) if following else [])
                if isinstance(b, dict) and b.get("type") == "tool_result"
            }
            missing = [u for u in uses if u not in answered]
            if missing:
                return (
                    f"messages.{i}: `tool_use` ids were found without `tool_result` blocks "
                    f"immediately after: {', '.join(missing)}. Each `tool_use` block must have "
                    "a corresponding `tool_result` block in the next message."
                )
            continue
        previous = messages[i - 1] if i else None
        known = {
            b.get("id")
            for b in (_blocks(previous) if previous else [])
            if isinstance(b, dict) and b.get("type") == "tool_use"
        }
        seen_other = False
        for j, b in enumerate(blocks):
            if b.get("type") != "tool_result":
                seen_other = True
                continue
            if seen_other:
                return (
                    f"messages.{i}.content.{j}: `tool_result` blocks must come first in the "
                    "message, before any other content"
                )
            if b.get("tool_use_id") not in known:
                return (
                    f"messages.{i}.content.{j}: unexpected `tool_use_id` found in "
                    f"`tool_result` blocks: {b.get('tool_use_id')}. Each `tool_result` block "
                    "must have a corresponding `tool_use` block in the previous message."
                )
    return ""


def _tools_problem(body: dict[str, Any]) -> str:
    tools = body.get("tools")
    names: set[str] = set()
    if tools is not None:
        if not isinstance(tools, list):
            return "tools: Input should be a valid list"
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict):
                return f"tools.{i}: Input should be an object"
            if tool.get("type") not in (None, "custom"):
                # A server tool (web search, code execution, ...): versioned type and a name.
                if not isinstance(tool.get("name"), str):
                    return f"tools.{i}.name: Field required"
                names.add(tool["name"])
                continue
            if not isinstance(tool.get("name"), str) or not tool["name"]:
                return f"tools.{i}.name: Field required"
            schema = tool.get("input_schema")
            if not isinstance(schema, dict):
                return f"tools.{i}.input_schema: Field required"
            if schema.get("type") != "object":
                return f"tools.{i}.input_schema.type: Input should be 'object'"
            if tool["name"] in names:
                return f"tools: Tool names must be unique: {tool['name']}"
            names.add(tool["name"])
    choice = body.get("tool_choice")
    if choice is None:
        return ""
    if not isinstance(choice, dict) or choice.get("type") not in TOOL_CHOICES:
        return "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'"
    allowed = {"type", "disable_parallel_tool_use"} | (
        {"name"} if choice["type"] == "tool" else set()
    )
    if choice["type"] == "none":
        allowed = {"type"}
    if extra := set(choice) - allowed:
        return f"tool_choice.{sorted(extra)[0]}: Extra inputs are not permitted"
    if "disable_parallel_tool_use" in choice and not isinstance(
        choice["disable_parallel_tool_use"], bool
    ):
        return "tool_choice.disable_parallel_tool_use: Input should be a valid boolean"
    if choice["type"] == "tool" and choice.get("name") not in names:
        return f"tool_choice.name: Tool '{choice.get('name')}' not found in tools"
    if choice["type"] in ("any", "tool") and not names:
        return "tool_choice: tools must be provided when tool_choice is 'any' or 'tool'"
    return ""


def _format_problem(fmt: Any, p: str) -> str:
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return f"{p}.type: Input should be 'json_schema'"
    if not isinstance(fmt.get("schema"), dict):
        return f"{p}.schema: Field required"
    return ""


def _options_problem(body: dict[str, Any]) -> str:
    config = body.get("output_config")
    if config is not None:
        if not isinstance(config, dict):
            return "output_config: Input should be an object"
        if extra := set(config) - {"format", "effort"}:
            return f"output_config.{sorted(extra)[0]}: Extra inputs are not permitted"
        if config.get("format") is not None and (
            found := _format_problem(config["format"], "output_config.format")
        ):
            return found
    if body.get("output_format") is not None and (
        found := _format_problem(body["output_format"], "output_format")
    ):
        return found
    temperature = body.get("temperature")
    if temperature is not None and not (
        isinstance(temperature, int | float) and 0 <= temperature <= 1
    ):
        return "temperature: Input should be less than or equal to 1"
    thinking = body.get("thinking")
    if thinking is not None:
        kind = thinking.get("type") if isinstance(thinking, dict) else None
        if kind not in ("enabled", "disabled", "adaptive"):
            return "thinking.type: Input should be 'enabled', 'disabled' or 'adaptive'"
        if kind == "enabled":
            budget = thinking.get("budget_tokens")
            if not isinstance(budget, int) or budget < 1024:
                return (
                    "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
                )
            if isinstance(body.get("max_tokens"), int) and budget >= body["max_tokens"]:
                return "`max_tokens` must be greater than `thinking.budget_tokens`"
    stops = body.get("stop_sequences")
    if stops is not None and not (
        isinstance(stops, list) and all(isinstance(s, str) for s in stops)
    ):
        return "stop_sequences: Input should be a valid list of strings"
    metadata = body.get("metadata")
    if metadata is not None and (not isinstance(metadata, dict) or set(metadata) - {"user_id"}):
        return "metadata: Extra inputs are not permitted"
    return ""
