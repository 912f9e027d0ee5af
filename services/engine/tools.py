"""Function tools on a chat template that has no tool syntax: how definitions, calls and results
are written into the prompt, the grammar that holds a choice to well-formed calls, and the parser
that turns the constrained output back into structured calls while it streams.

The one format (docs/ARCHITECTURE.md shows it whole):

- **definitions** go into the system turn: the first system message gets the block below
  appended after a blank line (a request without one gets a system message holding only the
  block), one JSON line `{"type": "function", "function": {...}}` per tool inside `<tools>`;
- **a call** is `<tool_call>\\n{"name": NAME, "arguments": ARGUMENTS}\\n</tool_call>`, compact
  JSON with `", "` and `": "` separators; several calls are separated by one newline. An
  assistant message's `tool_calls` are rendered so after its content (and a newline);
- **a result** (a `tool` message) becomes a user turn
  `<tool_response>\\nCONTENT\\n</tool_response>`; consecutive results share one user turn, one
  block each, in order (ids and names are not rendered: results follow their calls' order).

Stop strings apply to content only, never inside calls.

The grammar: `required` and a named function allow only calls (one, or several separated by
newlines when parallel calls are allowed) whose arguments validate against that function's
`parameters`; `auto` allows either calls or content that does not start with `<` (or, with a
JSON response format, content of that format); `none` applies no tool grammar at all.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.common.errors import InvalidArgument
from services.engine.constraints import json_schema, parse_schema

CALL_OPEN = "<tool_call>\n"
CALL_CLOSE = "\n</tool_call>"
CALL_SEPARATOR = "\n"
_NAME_KEY = '{"name": '
_ARGUMENTS_KEY = ', "arguments": '
_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")

TOOLS_PREAMBLE = (
    "# Tools\n\n"
    "You may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
)
TOOLS_POSTAMBLE = (
    "\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n"
    '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)


@dataclass(frozen=True)
class ToolSpec:
    """One function tool, validated."""

    name: str
    description: str
    parameters: dict[str, Any]
    strict: bool

    def definition(self) -> str:
        function: dict[str, Any] = {"name": self.name}
        if self.description:
            function["description"] = self.description
        function["parameters"] = self.parameters
        return json.dumps({"type": "function", "function": function}, ensure_ascii=False)


@dataclass(frozen=True)
class Message:
    """A chat message as the engine renders it (a plain view of the proto's ChatMessage)."""

    role: str
    content: str
    tool_calls: tuple[tuple[str, str, str], ...] = ()  # (id, name, arguments JSON text)
    tool_call_id: str = ""
    name: str = ""


@dataclass
class CallDelta:
    """A piece of one tool call, as GenerateResponse.tool_calls carries it."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


def tool_specs(tools: Sequence[tuple[str, str, str, bool]]) -> list[ToolSpec]:
    """(name, description, parameters JSON, strict) per tool, validated: InvalidArgument names
    the field, e.g. tools[0].function.parameters."""
    specs: list[ToolSpec] = []
    seen: set[str] = set()
    for i, (name, description, parameters, strict) in enumerate(tools):
        where = f"tools[{i}].function"
        if not _NAME.match(name):
            raise InvalidArgument(
                f"{where}.name must be 1-64 letters, digits, underscores or dashes",
                param=f"{where}.name",
            )
        if name in seen:
            raise InvalidArgument(f"{where}.name {name!r} is given twice", param=f"{where}.name")
        seen.add(name)
        schema = parse_schema(parameters, f"{where}.parameters")
        specs.append(ToolSpec(name, description, schema, strict))
    return specs


def render_messages(
    messages: Sequence[Message], tools: Sequence[ToolSpec]
) -> list[tuple[str, str]]:
    """(role, content) pairs for the chat template, with tools, calls and results written in."""
    out: list[tuple[str, str]] = []
    results: list[str] = []

    def flush_results() -> None:
        if results:
            out.append(("user", "\n".join(results)))
            results.clear()

    for i, m in enumerate(messages):
        if m.role == "tool":
            results.append(f"<tool_response>\n{m.content}\n</tool_response>")
            continue
        flush_results()
        content = m.content
        if m.tool_calls:
            if m.role != "assistant":
                raise InvalidArgument(
                    f"messages[{i}]: only assistant messages carry tool_calls",
                    param=f"messages[{i}].tool_calls",
                )
            blocks = []
            for j, (_, name, arguments) in enumerate(m.tool_calls):
                where = f"messages[{i}].tool_calls[{j}].function.arguments"
                try:
                    args = json.loads(arguments) if arguments.strip() else {}
                except json.JSONDecodeError:
                    raise InvalidArgument(f"{where} is not valid JSON", param=where) from None
                blocks.append(call_text(name, args))
            content = "\n".join([content, *blocks] if content else blocks)
        out.append((m.role, content))
    flush_results()
    if tools:
        block = TOOLS_PREAMBLE + "\n".join(t.definition() for t in tools) + TOOLS_POSTAMBLE
        if out and out[0][0] in ("system", "developer"):
            role, content = out[0]
            out[0] = (role, f"{content}\n\n{block}" if content else block)
        else:
            out.insert(0, ("system", block))
    return out


def call_text(name: str, arguments: Any) -> str:
    """One call exactly as the model writes it under the tool grammar."""
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"{CALL_OPEN}{body}{CALL_CLOSE}"


def _call_schema(tools: Sequence[ToolSpec]) -> dict[str, Any]:
    """One call body: the name of one of `tools` and arguments valid for that tool."""
    options = []
    for t in tools:
        params = json_schema(t.parameters, t.strict)
        params.pop("x-guidance")  # only the top level of a schema takes layout options
        options.append(
            {
                "type": "object",
                "properties": {"name": {"const": t.name}, "arguments": params},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    return json_schema({"anyOf": options}, strict=False)


def tool_grammar(
    tools: Sequence[ToolSpec], *, calls_only: bool, parallel: bool, content: str | None
) -> str:
    """A Lark grammar (llguidance's dialect) for a choice's output: calls to `tools`, or, unless
    `calls_only`, content (`content` is a `%json {...}` body, or None for free text)."""
    calls = 'calls: call ("\\n" call)*' if parallel else "calls: call"
    lines = [
        "start: calls" if calls_only else "start: calls | content",
        calls,
        'call: "<tool_call>\\n" body "\\n</tool_call>"',
        f"body: %json {json.dumps(_call_schema(tools))}",
    ]
    if not calls_only:
        # Content may not start with "<", so the first character tells text from a call.
        lines.append(f"content: {content}" if content else "content: TEXT")
        lines.append("TEXT: /[^<](.|\\n)*/")
    return "\n".join(lines)


class ToolCallStream:
    """Splits a choice's output, as it is decoded, into content and tool-call deltas.

    Relies on the tool grammar: the output is either content (never starting with "<") or
    calls in the exact layout above. The name is reported whole, in the call's first delta;
    arguments are passed on as they arrive, up to the brace that closes them.
    """

    def __init__(self, calls_only: bool) -> None:
        self.calls_mode: bool | None = True if calls_only else None
        self.calls = 0  # calls begun
        self.completed = 0  # calls whose closing tag has been read
        self._buf = ""
        self._state = "open"
        self._depth = 0
        self._in_string = False
        self._escaped = False

    def feed(self, piece: str) -> tuple[str, list[CallDelta]]:
        if not piece:
            return "", []
        if self.calls_mode is None:
            self.calls_mode = piece.startswith("<")
        if not self.calls_mode:
            return piece, []
        self._buf += piece
        deltas: list[CallDelta] = []
        while self._step(deltas):
            pass
        return "", deltas

    def _expect(self, literal: str) -> bool:
        """Consumes `literal` once the buffer holds it; False while it is still incomplete."""
        if len(self._buf) < len(literal):
            if not literal.startswith(self._buf):
                raise ValueError(f"tool call output out of shape: {self._buf!r}")
            return False
        if not self._buf.startswith(literal):
            raise ValueError(f"tool call output out of shape: {self._buf[: len(literal)]!r}")
        self._buf = self._buf[len(literal) :]
        return True

    def _step(self, deltas: list[CallDelta]) -> bool:
        """Advances one state if the buffer allows; False when it needs more text."""
        state = self._state
        if state == "open":
            if not self._expect(CALL_OPEN + _NAME_KEY):
                return False
            self._state = "name"
        elif state == "name":
            end = _string_end(self._buf)
            if end < 0:
                return False
            name = json.loads(self._buf[: end + 1])
            self._buf = self._buf[end + 1 :]
            deltas.append(CallDelta(self.calls, id=new_call_id(), name=name))
            self.calls += 1
            self._state = "separator"
        elif state == "separator":
            if not self._expect(_ARGUMENTS_KEY):
                return False
            self._state = "arguments"
        elif state == "arguments":
            if not self._buf:
                return False
            taken = self._scan_arguments()
            fragment, self._buf = self._buf[:taken], self._buf[taken:]
            self._add_arguments(deltas, fragment)
            if self._depth > 0:
                return False
            self._state = "close"
        elif state == "close":
            if not self._expect("}" + CALL_CLOSE):
                return False
            self.completed += 1
            self._state = "between"
        else:  # between calls
            if not self._expect(CALL_SEPARATOR):
                return False
            self._state = "open"
        return True

    def _scan_arguments(self) -> int:
        """How many characters of the buffer belong to the arguments object (string-aware)."""
        for i, ch in enumerate(self._buf):
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif ch == "\\":
                    self._escaped = True
                elif ch == '"':
                    self._in_string = False
            elif ch == '"':
                self._in_string = True
            elif ch in "{[":
                self._depth += 1
            elif ch in "}]":
                self._depth -= 1
                if self._depth == 0:
                    return i + 1
        return len(self._buf)

    def _add_arguments(self, deltas: list[CallDelta], fragment: str) -> None:
        if not fragment:
            return
        if deltas and deltas[-1].index == self.calls - 1:
            deltas[-1].arguments += fragment
        else:
            deltas.append(CallDelta(self.calls - 1, arguments=fragment))


def _string_end(text: str) -> int:
    """The index of the quote closing the JSON string that starts `text`, or -1 if not yet."""
    escaped = False
    for i, ch in enumerate(text[1:], start=1):
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            return i
    return -1
