"""OpenAI chat-completions request bodies -> Anthropic Messages request bodies.

The field policy and the choices behind it are described in
`services.edge.providers.anthropic_chat`, the module callers import.
"""

from __future__ import annotations

from typing import Any

from services.edge.providers.anthropic_chat_messages import (
    check_keys,
    conversation,
    invalid,
    unsupported,
)

# The tool that carries a JSON answer when Anthropic's own structured output cannot be used
# (`json_object`, and `json_schema` without `strict`): forced, its input is the answer.
JSON_TOOL = "json_response"
# reasoning_effort -> extended thinking budget (tokens). 1024 is Anthropic's minimum budget.
THINKING_BUDGETS = {
    "minimal": 1024,
    "low": 2048,
    "medium": 8192,
    "high": 16384,
    "xhigh": 32768,
    "max": 65536,
}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _zero(value: Any) -> bool:
    return value is None or (_number(value) and value == 0)


# Fields with no Anthropic equivalent, accepted only at the value that changes nothing.
_NEUTRAL: dict[str, Any] = {
    "n": lambda v: v is None or (_number(v) and v == 1),
    "logprobs": lambda v: v is None or v is False,
    "top_logprobs": _zero,
    "presence_penalty": _zero,
    "frequency_penalty": _zero,
    "logit_bias": lambda v: v is None or v == {},
    "seed": lambda v: v is None,
    "audio": lambda v: v is None,
    "modalities": lambda v: v is None or v == ["text"],
    "prediction": lambda v: v is None,
    "store": lambda v: v is None or v is False,
    "metadata": lambda v: v is None or v == {},
    "web_search_options": lambda v: v is None,
    "verbosity": lambda v: v is None or v == "medium",
    "moderation": lambda v: v is None,
    "prompt_cache_retention": lambda v: v is None,
    "prompt_cache_options": lambda v: v is None,
    "functions": lambda v: v is None,
    "function_call": lambda v: v is None,
}
_WHY = {
    "functions": "functions is deprecated and not translated for Anthropic models; use tools.",
    "function_call": "function_call is deprecated and not translated for Anthropic models; "
    "use tool_choice.",
    "seed": "Anthropic models take no seed; it is refused rather than dropped because a seed "
    "promises repeatable output.",
}
_TRANSLATED = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "top_k",
        "stop",
        "user",
        "safety_identifier",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "reasoning_effort",
        "service_tier",
        # A routing hint for OpenAI's prompt cache; it changes no output (see the policy).
        "prompt_cache_key",
    }
)


def chat_to_messages(
    body: dict[str, Any], model: str, default_max_tokens: int
) -> tuple[dict[str, Any], dict[str, str]]:
    """An OpenAI chat-completions request body -> (Anthropic Messages body, extra headers)."""
    if not isinstance(body, dict):
        raise invalid("body", "The request body must be a JSON object.")
    _check_fields(body)
    system, turns = conversation(body.get("messages"))
    out: dict[str, Any] = {"model": model, "messages": turns}
    if system is not None:
        out["system"] = system
    if "stream" in body and body["stream"] is not None:
        if not isinstance(body["stream"], bool):
            raise invalid("stream", "stream must be a boolean.")
        out["stream"] = body["stream"]
    _stream_options(body)
    cap = _cap(body)
    _sampling(body, out)
    _identity(body, out)
    forced_json = _tools_and_format(body, out)
    budget = _thinking(body, out, cap, forced_json)
    if cap is not None:
        out["max_tokens"] = cap
    else:
        out["max_tokens"] = default_max_tokens + budget
    return out, {}


def _check_fields(body: dict[str, Any]) -> None:
    for name, value in body.items():
        if name in _TRANSLATED:
            continue
        if name in _NEUTRAL:
            if not _NEUTRAL[name](value):
                why = _WHY.get(name, f"{name} is not supported by Anthropic models.")
                raise unsupported(name, why)
            continue
        raise unsupported(name, f"Unrecognized request argument supplied: {name}")


def _stream_options(body: dict[str, Any]) -> None:
    options = body.get("stream_options")
    if options is None:
        return
    if not body.get("stream"):
        raise invalid(
            "stream_options",
            "The 'stream_options' parameter is only allowed when 'stream' is true.",
        )
    if not isinstance(options, dict):
        raise invalid("stream_options", "stream_options must be an object.")
    for key in options:
        if key not in ("include_usage", "include_obfuscation"):
            raise unsupported(f"stream_options.{key}", f"Unrecognized stream option: {key}")


def _positive_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise invalid(name, f"{name} must be an integer of at least 1.")
    return value


def _cap(body: dict[str, Any]) -> int | None:
    """max_completion_tokens or max_tokens (the smaller one where a client sends both)."""
    caps = [
        c
        for c in (_positive_int(body, "max_completion_tokens"), _positive_int(body, "max_tokens"))
        if c
    ]
    return min(caps) if caps else None


def _sampling(body: dict[str, Any], out: dict[str, Any]) -> None:
    temperature = body.get("temperature")
    if temperature is not None:
        if not _number(temperature) or not 0 <= temperature <= 1:
            raise invalid("temperature", "Anthropic models take a temperature between 0 and 1.")
        out["temperature"] = temperature
    top_p = body.get("top_p")
    if top_p is not None:
        if not _number(top_p) or not 0 <= top_p <= 1:
            raise invalid("top_p", "top_p must be a number between 0 and 1.")
        out["top_p"] = top_p
    top_k = body.get("top_k")
    if top_k is not None:
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            raise invalid("top_k", "top_k must be an integer of at least 1.")
        out["top_k"] = top_k
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
            raise invalid("stop", "stop must be a non-empty string or a list of them.")
        if stops:
            out["stop_sequences"] = stops


def _identity(body: dict[str, Any], out: dict[str, Any]) -> None:
    user, safety = body.get("user"), body.get("safety_identifier")
    for name, value in (("user", user), ("safety_identifier", safety)):
        if value is not None and not isinstance(value, str):
            raise invalid(name, f"{name} must be a string.")
    if user and safety and user != safety:
        raise invalid(
            "safety_identifier",
            "user and safety_identifier differ; Anthropic takes one end-user id "
            "(metadata.user_id).",
        )
    if user or safety:
        out["metadata"] = {"user_id": safety or user}
    tier = body.get("service_tier")
    if tier == "default":
        out["service_tier"] = "standard_only"
    elif tier not in (None, "auto"):
        raise unsupported(
            "service_tier", f"service_tier '{tier}' has no equivalent on Anthropic models."
        )


# ---------------------------------------------------------------------------------------------
# Tools, tool choice, structured output, thinking


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise invalid("tools", "tools must be an array.")
    out = []
    for i, tool in enumerate(tools):
        p = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise unsupported(f"{p}.type", f"Tool type {kind!r} has no Anthropic equivalent.")
        check_keys(tool, p, ("type", "function"))
        fn = tool.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise invalid(f"{p}.function.name", "A function tool needs function.name.")
        check_keys(fn, f"{p}.function", ("name", "description", "parameters", "strict"))
        if fn["name"] == JSON_TOOL:
            raise invalid(
                f"{p}.function.name",
                f"The tool name {JSON_TOOL!r} is reserved on Anthropic models.",
            )
        schema = fn.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(schema, dict):
            raise invalid(f"{p}.function.parameters", "parameters must be a JSON schema object.")
        entry: dict[str, Any] = {"name": fn["name"], "input_schema": schema}
        if fn.get("description"):
            entry["description"] = fn["description"]
        if fn.get("strict") is True:
            entry["strict"] = True
        out.append(entry)
    return out


def _named_choice(choice: dict[str, Any], names: set[str]) -> str:
    if choice.get("type") != "function":
        raise unsupported(
            "tool_choice.type",
            f"tool_choice type {choice.get('type')!r} has no Anthropic equivalent.",
        )
    fn = choice.get("function")
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str) or name not in names:
        raise invalid("tool_choice.function.name", "tool_choice names a function not in tools.")
    return name


def _json_format(body: dict[str, Any]) -> tuple[str, dict[str, Any] | None, str]:
    """("", None, "") for plain text; ("native", schema, "") or ("tool", schema, description)."""
    fmt = body.get("response_format")
    if fmt is None:
        return "", None, ""
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return "", None, ""
    if kind == "json_object":
        return "tool", {"type": "object"}, "Answer with a JSON object."
    if kind != "json_schema":
        raise invalid("response_format.type", f"Unknown response_format type {kind!r}.")
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise invalid("response_format.json_schema.name", "json_schema needs a name.")
    schema = spec.get("schema") or {"type": "object"}
    if not isinstance(schema, dict):
        raise invalid("response_format.json_schema.schema", "schema must be a JSON schema object.")
    if spec.get("strict") is True:
        return "native", schema, ""
    description = spec.get("description") or f"Answer with JSON: {spec['name']}."
    return "tool", schema, str(description)


def _tools_and_format(body: dict[str, Any], out: dict[str, Any]) -> bool:
    """Tools, tool_choice and response_format; True when the JSON answer goes through JSON_TOOL."""
    tools = _tools(body["tools"]) if body.get("tools") is not None else []
    names = {t["name"] for t in tools}
    choice = body.get("tool_choice")
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise invalid("parallel_tool_calls", "parallel_tool_calls must be a boolean.")
    mode, schema, description = _json_format(body)
    anthropic_choice: dict[str, Any] | None
    if choice is None:
        anthropic_choice = {"type": "auto"} if tools else None
    elif choice == "none":
        anthropic_choice = {"type": "none"} if tools else None
    elif choice == "auto":
        anthropic_choice = {"type": "auto"} if tools else None
    elif choice == "required":
        if not tools:
            raise invalid("tool_choice", "tool_choice 'required' needs tools.")
        anthropic_choice = {"type": "any"}
    elif isinstance(choice, dict):
        anthropic_choice = {"type": "tool", "name": _named_choice(choice, names)}
    else:
        raise invalid("tool_choice", f"Unknown tool_choice {choice!r}.")
    if mode == "native":
        out["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
    elif mode == "tool":
        json_tool = {"name": JSON_TOOL, "description": description, "input_schema": schema}
        if anthropic_choice is None or anthropic_choice["type"] == "none":
            anthropic_choice = {
                "type": "tool",
                "name": JSON_TOOL,
                "disable_parallel_tool_use": True,
            }
        elif anthropic_choice["type"] == "auto":
            # The answer must be JSON, so a turn ends either in client tool calls or in the JSON.
            anthropic_choice = {"type": "any"}
        tools = [*tools, json_tool]
    if tools:
        out["tools"] = tools
    if anthropic_choice is not None:
        if parallel is False and anthropic_choice["type"] != "none":
            anthropic_choice["disable_parallel_tool_use"] = True
        # Anthropic's default with tools is auto: sent only when the client asked for it.
        if choice is not None or anthropic_choice != {"type": "auto"}:
            out["tool_choice"] = anthropic_choice
    return mode == "tool"


def _thinking(body: dict[str, Any], out: dict[str, Any], cap: int | None, forced_json: bool) -> int:
    """Extended thinking for reasoning_effort; returns the budget (0 without thinking)."""
    effort = body.get("reasoning_effort")
    if effort is None or effort == "none":
        return 0
    if effort not in THINKING_BUDGETS:
        raise invalid("reasoning_effort", f"Unknown reasoning_effort {effort!r}.")
    budget = THINKING_BUDGETS[effort]
    if cap is not None:
        cap_name = "max_completion_tokens" if body.get("max_completion_tokens") else "max_tokens"
        if cap <= 1024:
            raise invalid(
                cap_name,
                f"With reasoning_effort, {cap_name} must exceed 1024 on Anthropic models "
                "(the smallest thinking budget).",
            )
        budget = min(budget, max(1024, cap // 2))
    # What the API refuses beside extended thinking, named here rather than left to a 400
    # from the provider that names Anthropic's fields.
    if out.get("temperature", 1) != 1:
        raise invalid(
            "temperature", "With reasoning_effort, Anthropic models take temperature 1 only."
        )
    if "top_k" in out:
        raise unsupported("top_k", "With reasoning_effort, Anthropic models take no top_k.")
    if out.get("top_p", 1) < 0.95:
        raise invalid("top_p", "With reasoning_effort, Anthropic models take top_p from 0.95 to 1.")
    if forced_json:
        raise unsupported(
            "response_format",
            "With reasoning_effort, Anthropic models take response_format json_schema with "
            "strict: true only.",
        )
    if (out.get("tool_choice") or {}).get("type") in ("any", "tool"):
        raise unsupported(
            "tool_choice", "With reasoning_effort, Anthropic models take tool_choice auto or none."
        )
    last = out["messages"][-1]
    if (
        last["role"] == "user"
        and isinstance(last["content"], list)
        and any(b["type"] == "tool_result" for b in last["content"])
    ):
        # The API wants the thinking that preceded the tool calls sent back, and OpenAI
        # messages have no place for it.
        raise unsupported(
            "reasoning_effort",
            "reasoning_effort cannot continue a tool call on Anthropic models: the model's "
            "thinking before the call cannot be carried in chat messages.",
        )
    out["thinking"] = {"type": "enabled", "budget_tokens": budget}
    return budget
