"""OpenAI Responses API <-> chat completions, as pure functions (no I/O): how a Responses request
for a hosted or an Anthropic model runs on the chat path that already serves that model.

`to_chat` turns a Responses request body (after the stored conversation of its
`previous_response_id`, when it has one) into a chat-completions body;
`responses_objects.completion_to_response` turns the chat path's `chat.completion` into a
`response` object, and `responses_events` the chat path's stream into the Responses events.
This docstring is the policy of all three. A field is translated, handled by the Responses route
itself, accepted because it changes nothing here, or refused with a 400 naming it
(`unsupported_parameter` / `invalid_value`); nothing is dropped without saying so here. What the
chat path under it cannot honour is refused there, with the parameter named in Responses terms
(`responses_param`).

Request fields:

- model -> model. input: a string -> one user message; items -> messages, in order:
  `message` (or an item with a role and no type) with a string or parts: `input_text` and
  `output_text` -> text parts, `refusal` -> a refusal part, `input_image` (an http(s) or data URL
  in `image_url`; `detail`) -> an `image_url` part, `input_file` (`file_data`, `filename`) -> a
  `file` part; roles system, developer, user, assistant as they are. `function_call` -> an
  assistant message's `tool_calls` entry (`call_id` as its id), joined to the assistant message
  right before it; `function_call_output` (a string, or text parts) -> a `tool` message. Item
  and part `id`s and `status`es are accepted and not sent (they identify, they do not
  instruct). `file_id`, `file_url`, `item_reference`, `reasoning` and every other item type are
  refused naming the item.
- instructions (a string) -> a system message before everything else; like OpenAI, the
  instructions of a previous response are not carried over (the stored conversation holds
  input and output items only).
- max_output_tokens -> max_completion_tokens; temperature, top_p as they are; user -> user
  (safety_identifier too, where no user is sent: both only identify the end user).
- tools: function tools in the flat shape (`name`, `description`, `parameters`, `strict`) ->
  chat's nested `function`; `strict` is sent only when the client sent it. Built-in tools
  (web_search, file_search, code_interpreter, computer use, image generation, mcp, custom, ...)
  are refused naming `tools[i].type`: only OpenAI's own models run them (`openai/<model>`).
- tool_choice: "none", "auto", "required" as they are; `{"type": "function", "name"}` -> chat's
  named function; allowed_tools and built-in tool choices refused. tool_choice and
  parallel_tool_calls go with tools only: without tools, "none", "auto" and parallel_tool_calls
  change nothing and are not sent, and any other choice is refused.
- text.format: `text` -> nothing; `json_object` -> response_format json_object; `json_schema`
  (`name`, `schema`, `strict`, `description`) -> response_format json_schema. text.verbosity:
  only "medium" (the default; no model here takes another).
- reasoning.effort -> reasoning_effort (the chat path decides: Anthropic models think, hosted
  models refuse it); reasoning.summary refused (no summaries are produced).
- stream -> stream, with `stream_options.include_usage` (the response's usage comes from the
  chat path's own count); stream_options only with stream, `include_obfuscation` accepted with
  no effect (no obfuscation padding is added).
- Handled by the route: store, previous_response_id; metadata (at most 16 string pairs) is
  echoed in the response object.
- Accepted with no effect: prompt_cache_key (a routing hint for OpenAI's cache), service_tier
  "auto" / "default" (there is one tier), truncation "disabled" (the default), max_tool_calls
  (it bounds built-in tool calls, which these models never make), include [], top_logprobs 0,
  background false; null for conversation, prompt, prompt_cache_retention, context_management.
  Any other value of these is refused naming the field, and so is any field not listed here
  ("Unrecognized request argument supplied").

Answers: the message's text -> a `message` output item with one `output_text` part (a message
item is there whenever there is text or no tool call), each tool call -> a `function_call` item
(`call_id` = the chat tool call's id, `name`, `arguments`), in that order. finish_reason
"length" -> status "incomplete" with `incomplete_details.reason` "max_output_tokens" (the items
"incomplete" too), "content_filter" -> "incomplete" / "content_filter", anything else ->
"completed". Usage: input_tokens = prompt_tokens (cached ones included, as OpenAI counts them),
`input_tokens_details.cached_tokens` and `.cache_write_tokens` (what Anthropic wrote to its
cache), output_tokens = completion_tokens, total_tokens.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.edge.errors import APIError

MAX_METADATA_PAIRS = 16


def unsupported(param: str, message: str) -> APIError:
    return APIError(400, message, param=param, code="unsupported_parameter")


def invalid(param: str, message: str) -> APIError:
    return APIError(400, message, param=param, code="invalid_value")


def _null(value: Any) -> bool:
    return value is None


# Accepted only at the value that changes nothing for these models (see the module doc).
_NEUTRAL: dict[str, Callable[[Any], bool]] = {
    "prompt_cache_key": lambda v: v is None or isinstance(v, str),
    "service_tier": lambda v: v in (None, "auto", "default"),
    "truncation": lambda v: v in (None, "disabled"),
    "max_tool_calls": lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)),
    "include": lambda v: v is None or v == [],
    "top_logprobs": lambda v: v in (None, 0),
    "background": lambda v: v in (None, False),
    "conversation": _null,
    "prompt": _null,
    "prompt_cache_retention": _null,
    "context_management": _null,
}
_WHY = {
    "background": "background responses are not supported for this model; "
    "send the request without background.",
    "conversation": "conversations are not supported for this model: continue a response "
    "with previous_response_id.",
    "prompt": "prompt templates are not supported for this model; send input and instructions.",
    "include": "include cannot be honoured for this model: it produces no reasoning items, "
    "logprobs, or built-in tool results.",
    "truncation": "truncation 'auto' is not supported for this model; an input longer than "
    "its context is refused instead.",
}
_HANDLED = frozenset(
    {
        "model",
        "input",
        "instructions",
        "max_output_tokens",
        "temperature",
        "top_p",
        "parallel_tool_calls",
        "tools",
        "tool_choice",
        "text",
        "reasoning",
        "stream",
        "stream_options",
        "store",
        "previous_response_id",
        "metadata",
        "user",
        "safety_identifier",
    }
)
# Chat parameter (prefix) -> the Responses parameter it came from, for errors of the chat path.
_PARAMS = (
    (re.compile(r"^messages\b.*"), "input"),
    (re.compile(r"^(max_completion_tokens|max_tokens)$"), "max_output_tokens"),
    (re.compile(r"^response_format\b.*"), "text.format"),
    (re.compile(r"^reasoning_effort$"), "reasoning.effort"),
    (re.compile(r"^tool_choice\.function\.(.*)$"), r"tool_choice.\1"),
    (re.compile(r"^tools\[(\d+)\]\.function\.(.*)$"), r"tools[\1].\2"),
    (re.compile(r"^tools\.(\d+)\.function\.(.*)$"), r"tools[\1].\2"),
)


def responses_param(chat_param: str | None) -> str | None:
    """The Responses parameter that a chat-completions parameter was translated from."""
    if not chat_param:
        return chat_param
    for pattern, replacement in _PARAMS:
        if pattern.match(chat_param):
            return pattern.sub(replacement, chat_param)
    return chat_param


def in_responses_terms(err: APIError) -> APIError:
    """A chat path's 400 about a translated request, naming the client's own parameter."""
    err.param = responses_param(err.param)
    return err


@dataclass(frozen=True)
class ChatPlan:
    """A Responses request as the chat path runs it."""

    chat: dict[str, Any]
    # This request's input as items (what is stored, and continued by a follow-up).
    input_items: list[dict[str, Any]]


def check_request(body: dict[str, Any]) -> None:
    """The checks that need no stored conversation, made before any hop."""
    for name, value in body.items():
        if name in _HANDLED:
            continue
        if name in _NEUTRAL:
            if not _NEUTRAL[name](value):
                raise unsupported(
                    name, _WHY.get(name, f"This value of {name} is not supported for this model.")
                )
            continue
        raise unsupported(name, f"Unrecognized request argument supplied: {name}")
    if "input" not in body:
        raise APIError(
            400,
            "Missing required parameter: 'input'.",
            param="input",
            code="missing_required_parameter",
        )
    for name in ("store", "stream", "parallel_tool_calls"):
        if body.get(name) is not None and not isinstance(body[name], bool):
            raise invalid(name, f"'{name}' must be a boolean.")
    previous = body.get("previous_response_id")
    if previous is not None and (not isinstance(previous, str) or not previous):
        raise invalid("previous_response_id", "'previous_response_id' must be a response id.")
    _metadata(body.get("metadata"))
    for name in ("instructions", "user", "safety_identifier"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise invalid(name, f"'{name}' must be a string.")


def _metadata(value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, dict) or len(value) > MAX_METADATA_PAIRS:
        raise invalid("metadata", "metadata must be an object of at most 16 string pairs.")
    for key, item in value.items():
        if len(key) > 64 or not isinstance(item, str) or len(item) > 512:
            raise invalid(
                f"metadata.{key}",
                "metadata keys have at most 64 characters and values are strings of at most "
                "512 characters.",
            )


def input_items(value: Any) -> list[dict[str, Any]]:
    """The request's `input` as items: a string is one user message; items keep their shape,
    with `type` filled in for a message given as a bare role and content."""
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if not isinstance(value, list):
        raise invalid("input", "'input' must be a string or an array of input items.")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise invalid(f"input[{i}]", f"'input[{i}]' must be an object.")
        if "type" not in item and "role" in item:
            item = {"type": "message", **item}
        out.append(item)
    return out


def to_chat(body: dict[str, Any], history: list[dict[str, Any]]) -> ChatPlan:
    """A Responses request body -> the chat-completions body that serves it (see the module doc);
    `history` is the stored conversation of its previous_response_id ([] without one)."""
    check_request(body)
    items = input_items(body["input"])
    messages: list[dict[str, Any]] = []
    if body.get("instructions"):
        messages.append({"role": "system", "content": body["instructions"]})
    for item in history:
        _append_item(messages, item, "previous_response_id")
    for i, item in enumerate(items):
        _append_item(messages, item, f"input[{i}]")
    if not messages:
        raise invalid("input", "'input' must not be empty.")
    chat: dict[str, Any] = {"model": body["model"], "messages": messages}
    if body.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    _stream_options(body)
    for src, dst in (
        ("max_output_tokens", "max_completion_tokens"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
    ):
        if body.get(src) is not None:
            chat[dst] = body[src]
    if user := body.get("user") or body.get("safety_identifier"):
        chat["user"] = user
    _tools_and_choice(body, chat)
    if (response_format := _text(body.get("text"))) is not None:
        chat["response_format"] = response_format
    if (effort := _reasoning(body.get("reasoning"))) is not None:
        chat["reasoning_effort"] = effort
    return ChatPlan(chat, items)


def _stream_options(body: dict[str, Any]) -> None:
    options = body.get("stream_options")
    if options is None:
        return
    if not body.get("stream"):
        raise invalid("stream_options", "stream_options are only allowed with stream: true.")
    if not isinstance(options, dict):
        raise invalid("stream_options", "'stream_options' must be an object.")
    for key in options:
        if key != "include_obfuscation":
            raise unsupported(f"stream_options.{key}", f"Unrecognized stream option: {key}")


def _content(content: Any, p: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid(f"{p}.content", "'content' must be a string or an array of parts.")
    return [_part(part, f"{p}.content[{j}]") for j, part in enumerate(content)]


def _part(part: Any, p: str) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise invalid(p, f"'{p}' must be an object.")
    kind = part.get("type")
    if kind in ("input_text", "output_text"):
        if not isinstance(part.get("text"), str):
            raise invalid(f"{p}.text", "A text part needs its 'text'.")
        return {"type": "text", "text": part["text"]}
    if kind == "refusal":
        return {"type": "refusal", "refusal": str(part.get("refusal") or "")}
    if kind == "input_image":
        url = part.get("image_url")
        if part.get("file_id") or not isinstance(url, str) or not url:
            raise unsupported(
                p, "Images are taken as image_url (an http(s) or data URL); file_id is not "
                "supported for this model.",
            )  # fmt: skip
        image: dict[str, Any] = {"url": url}
        if part.get("detail") is not None:
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        if part.get("file_id") or part.get("file_url") or not part.get("file_data"):
            raise unsupported(
                p, "Files are taken as file_data (base64); file_id and file_url are not "
                "supported for this model.",
            )  # fmt: skip
        file: dict[str, Any] = {"file_data": part["file_data"]}
        if part.get("filename"):
            file["filename"] = part["filename"]
        return {"type": "file", "file": file}
    raise unsupported(p, f"The content part type '{kind}' is not supported for this model.")


def _append_item(messages: list[dict[str, Any]], item: dict[str, Any], p: str) -> None:
    kind = item.get("type")
    if kind == "message":
        role = item.get("role")
        if role not in ("system", "developer", "user", "assistant"):
            raise invalid(f"{p}.role", f"Invalid role '{role}' for a message item.")
        if "content" not in item:
            raise invalid(f"{p}.content", "A message item needs its 'content'.")
        messages.append({"role": role, "content": _content(item["content"], p)})
    elif kind == "function_call":
        for name in ("call_id", "name", "arguments"):
            if not isinstance(item.get(name), str):
                raise invalid(f"{p}.{name}", f"A function_call item needs '{name}' (a string).")
        call = {
            "id": item["call_id"],
            "type": "function",
            "function": {"name": item["name"], "arguments": item["arguments"]},
        }
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant":
            last.setdefault("tool_calls", []).append(call)
            if last.get("content") == "":
                last["content"] = None
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        if not isinstance(item.get("call_id"), str):
            raise invalid(f"{p}.call_id", "A function_call_output item needs its 'call_id'.")
        messages.append(
            {"role": "tool", "tool_call_id": item["call_id"], "content": _output(item, p)}
        )
    else:
        raise unsupported(
            p,
            f"The input item type '{kind}' is not supported for this model: it takes messages, "
            "function_call and function_call_output items.",
        )


def _output(item: dict[str, Any], p: str) -> str | list[dict[str, Any]]:
    output = item.get("output")
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        parts = [_part(part, f"{p}.output[{j}]") for j, part in enumerate(output)]
        if all(part["type"] == "text" for part in parts):
            return parts
    raise invalid(f"{p}.output", "A function_call_output's 'output' must be text.")


def _tools_and_choice(body: dict[str, Any], chat: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise invalid("tools", "'tools' must be an array.")
    choice = body.get("tool_choice")
    if not tools:
        # Without tools, "none", "auto" and parallel_tool_calls change nothing, and are not
        # sent (a model that takes no tools would refuse them); any other choice needs tools.
        if choice not in (None, "none", "auto"):
            raise invalid("tool_choice", "This tool_choice needs 'tools'.")
        return
    chat["tools"] = _tools(tools)
    if choice is not None:
        chat["tool_choice"] = _tool_choice(choice)
    if body.get("parallel_tool_calls") is not None:
        chat["parallel_tool_calls"] = body["parallel_tool_calls"]


_TOOL_KEYS = frozenset({"type", "name", "description", "parameters", "strict"})


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise invalid("tools", "'tools' must be an array.")
    out = []
    for i, tool in enumerate(tools):
        p = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise invalid(p, f"'{p}' must be an object.")
        kind = tool.get("type")
        if kind != "function":
            raise unsupported(
                f"{p}.type",
                f"The tool type '{kind}' is not supported for this model: it takes function "
                "tools; built-in tools run on OpenAI's models only (openai/<model>).",
            )
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            raise invalid(f"{p}.name", "A function tool needs its 'name'.")
        for key, value in tool.items():
            if key not in _TOOL_KEYS and value is not None:
                raise unsupported(f"{p}.{key}", f"Unrecognized function tool field: {key}")
        function: dict[str, Any] = {"name": tool["name"]}
        for key in ("description", "parameters", "strict"):
            if tool.get(key) is not None:
                function[key] = tool[key]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any) -> Any:
    if choice in ("none", "auto", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        if not isinstance(choice.get("name"), str):
            raise invalid("tool_choice.name", "A function tool choice needs its 'name'.")
        return {"type": "function", "function": {"name": choice["name"]}}
    kind = choice.get("type") if isinstance(choice, dict) else choice
    raise unsupported(
        "tool_choice",
        f"The tool choice '{kind}' is not supported for this model: use none, auto, required "
        "or a function.",
    )


def _text(text: Any) -> dict[str, Any] | None:
    if text is None:
        return None
    if not isinstance(text, dict):
        raise invalid("text", "'text' must be an object.")
    for key in text:
        if key not in ("format", "verbosity"):
            raise unsupported(f"text.{key}", f"Unrecognized text option: {key}")
    if text.get("verbosity") not in (None, "medium"):
        raise unsupported("text.verbosity", "Only verbosity 'medium' is supported for this model.")
    fmt = text.get("format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        assert isinstance(fmt, dict)
        if not isinstance(fmt.get("name"), str) or not isinstance(fmt.get("schema"), dict):
            raise invalid("text.format", "A json_schema format needs its 'name' and 'schema'.")
        schema: dict[str, Any] = {"name": fmt["name"], "schema": fmt["schema"]}
        for key in ("strict", "description"):
            if fmt.get(key) is not None:
                schema[key] = fmt[key]
        return {"type": "json_schema", "json_schema": schema}
    raise invalid("text.format.type", f"Unsupported text format '{kind}'.")


def _reasoning(reasoning: Any) -> str | None:
    if reasoning is None:
        return None
    if not isinstance(reasoning, dict):
        raise invalid("reasoning", "'reasoning' must be an object.")
    for key, value in reasoning.items():
        if key == "effort":
            continue
        if value is not None:
            raise unsupported(
                f"reasoning.{key}", f"reasoning.{key} is not supported for this model."
            )
    effort = reasoning.get("effort")
    return effort if isinstance(effort, str) else None
