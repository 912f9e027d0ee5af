"""What OpenAI's API refuses with a 400, roughly as it does: the checks of the OpenAI stand-in.

Each check answers ``(message, param)`` for the first problem found, or None. Messages follow the
real API's wording where it is well known (missing parameters, tool-call pairing).
"""

from __future__ import annotations

from typing import Any

Problem = tuple[str, str | None] | None
ROLES = ("system", "developer", "user", "assistant", "tool", "function")
RESPONSE_FORMATS = ("text", "json_object", "json_schema")


def _missing(param: str) -> Problem:
    return f"Missing required parameter: '{param}'.", param


def _int_in(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def chat_problem(body: Any) -> Problem:
    if not isinstance(body, dict):
        return "We could not parse the JSON body of your request.", None
    if not body.get("model"):
        return _missing("model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return (
            _missing("messages")
            if messages is None
            else ("'messages' must be non-empty.", "messages")
        )
    return (
        _messages_problem(messages)
        or _sampling_problem(body)
        or _tools_problem(body)
        or _format_problem(body.get("response_format"))
    )


def _messages_problem(messages: list[Any]) -> Problem:
    pending: dict[str, int] = {}  # tool_call ids still to be answered -> the assistant's index
    for i, m in enumerate(messages):
        p = f"messages[{i}]"
        if not isinstance(m, dict):
            return f"Invalid type for '{p}': expected an object.", p
        role = m.get("role")
        if role is None:
            return _missing(f"{p}.role")
        if role not in ROLES:
            allowed = ", ".join(f"'{r}'" for r in ROLES)
            return f"Invalid value: '{role}'. Supported values are: {allowed}.", f"{p}.role"
        if role != "tool" and pending:
            return _unanswered(pending)
        if role in ("system", "developer", "user") and m.get("content") is None:
            return _missing(f"{p}.content")
        if role == "tool":
            if not m.get("tool_call_id"):
                return _missing(f"{p}.tool_call_id")
            if m["tool_call_id"] not in pending:
                return (
                    "Invalid parameter: messages with role 'tool' must be a response to a "
                    "preceeding message with 'tool_calls'.",
                    f"messages.[{i}].role",
                )
            del pending[m["tool_call_id"]]
        if role == "assistant":
            for j, call in enumerate(m.get("tool_calls") or []):
                cp = f"{p}.tool_calls[{j}]"
                if not isinstance(call, dict) or not call.get("id"):
                    return _missing(f"{cp}.id")
                fn = call.get("function")
                if not isinstance(fn, dict) or not fn.get("name"):
                    return _missing(f"{cp}.function.name")
                if not isinstance(fn.get("arguments"), str):
                    return _missing(f"{cp}.function.arguments")
                pending[call["id"]] = i
    if pending:
        return _unanswered(pending)
    return None


def _unanswered(pending: dict[str, int]) -> Problem:
    first = min(pending.values())
    return (
        "An assistant message with 'tool_calls' must be followed by tool messages responding to "
        "each 'tool_call_id'. The following tool_call_ids did not have response messages: "
        + ", ".join(pending),
        f"messages.[{first}].role",
    )


def _sampling_problem(body: dict[str, Any]) -> Problem:
    n = body.get("n")
    if n is not None and not _int_in(n, 1, 128):
        return "Invalid 'n': expected an integer from 1 to 128.", "n"
    logprobs = body.get("logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        return "Invalid 'logprobs': expected a boolean.", "logprobs"
    top = body.get("top_logprobs")
    if top is not None:
        if not _int_in(top, 0, 20):
            return "Invalid 'top_logprobs': expected an integer from 0 to 20.", "top_logprobs"
        if not logprobs:
            return "'logprobs' must be set to true when 'top_logprobs' is used.", "top_logprobs"
    if body.get("stream_options") is not None and not body.get("stream"):
        return (
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "stream_options",
        )
    temperature = body.get("temperature")
    if temperature is not None and not (
        isinstance(temperature, int | float) and 0 <= temperature <= 2
    ):
        return "Invalid 'temperature': expected a number from 0 to 2.", "temperature"
    return None


def _tools_problem(body: dict[str, Any]) -> Problem:
    tools = body.get("tools")
    names = set()
    if tools is not None:
        if not isinstance(tools, list):
            return "Invalid type for 'tools': expected an array.", "tools"
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or tool.get("type") not in ("function", "custom"):
                return f"Invalid value for 'tools[{i}].type'.", f"tools[{i}].type"
            spec = tool.get(tool["type"])
            if not isinstance(spec, dict) or not spec.get("name"):
                return _missing(f"tools[{i}].{tool['type']}.name")
            names.add(spec["name"])
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        if name not in names:
            return (
                f"Invalid value for 'tool_choice': no function named '{name}' in 'tools'.",
                "tool_choice",
            )
    elif choice in ("required",) and not names:
        return "Invalid value for 'tool_choice': 'required' needs 'tools'.", "tool_choice"
    elif (
        choice is not None
        and not isinstance(choice, dict)
        and choice not in ("none", "auto", "required")
    ):
        return f"Invalid value for 'tool_choice': '{choice}'.", "tool_choice"
    return None


def _format_problem(fmt: Any) -> Problem:
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") not in RESPONSE_FORMATS:
        return "Invalid value for 'response_format.type'.", "response_format.type"
    if fmt["type"] == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not spec.get("name"):
            return _missing("response_format.json_schema.name")
    return None


def embeddings_problem(body: Any) -> Problem:
    if not isinstance(body, dict):
        return "We could not parse the JSON body of your request.", None
    if not body.get("model"):
        return "You must provide a model parameter.", "model"
    if "input" not in body or body["input"] is None:
        return _missing("input")
    if not embedding_inputs(body["input"]):
        return "'$.input' is invalid. Please check the API reference.", "input"
    if body.get("encoding_format", "float") not in ("float", "base64"):
        return (
            "Invalid value for 'encoding_format': expected 'float' or 'base64'.",
            "encoding_format",
        )
    dimensions = body.get("dimensions")
    if dimensions is not None and not _int_in(dimensions, 1, 3072):
        return "Invalid 'dimensions': expected an integer from 1 to 3072.", "dimensions"
    return None


def embedding_inputs(value: Any) -> list[Any]:
    """The inputs of an embeddings request (each a string or a list of token ids), [] if bad."""

    def tokens(v: Any) -> bool:
        return (
            isinstance(v, list)
            and bool(v)
            and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in v)
        )

    if isinstance(value, str):
        return [value] if value else []
    if tokens(value):
        return [value]
    if (
        isinstance(value, list)
        and value
        and all((isinstance(v, str) and v) or tokens(v) for v in value)
    ):
        return list(value)
    return []
