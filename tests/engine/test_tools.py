"""Tool definitions, calls and results in the prompt; the tool grammar; parsing calls back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.common.errors import InvalidArgument
from services.engine.constraints import Grammars, lark_grammar
from services.engine.text import TextCodec
from services.engine.tools import (
    TOOLS_POSTAMBLE,
    TOOLS_PREAMBLE,
    CallDelta,
    Message,
    ToolCallStream,
    call_text,
    render_messages,
    tool_grammar,
    tool_specs,
)

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
    "required": ["city", "unit"],
}
SPECS = tool_specs(
    [
        ("get_weather", "Current weather", json.dumps(WEATHER), True),
        ("add", "", json.dumps({"type": "object", "properties": {"x": {"type": "number"}}}), False),
    ]
)


@pytest.fixture(scope="module")
def codec(model_folder: Path) -> TextCodec:
    return TextCodec.from_folder(model_folder)


@pytest.fixture(scope="module")
def grammars(codec: TextCodec) -> Grammars:
    return Grammars(codec.grammar_tokenizer([2]))


def test_definitions_go_into_the_system_turn() -> None:
    block = (
        TOOLS_PREAMBLE
        + '{"type": "function", "function": {"name": "get_weather", "description": '
        + '"Current weather", "parameters": '
        + json.dumps(WEATHER)
        + "}}\n"
        + '{"type": "function", "function": {"name": "add", "parameters": {"type": "object", '
        + '"properties": {"x": {"type": "number"}}}}}'
        + TOOLS_POSTAMBLE
    )
    with_system = render_messages([Message("system", "Be brief."), Message("user", "Hi")], SPECS)
    assert with_system == [("system", "Be brief.\n\n" + block), ("user", "Hi")]
    without = render_messages([Message("user", "Hi")], SPECS)
    assert without == [("system", block), ("user", "Hi")]
    assert render_messages([Message("user", "Hi")], []) == [("user", "Hi")]


def test_calls_and_results_round_trip_into_the_prompt(codec: TextCodec) -> None:
    history = [
        Message("user", "Weather in Paris and Rome?"),
        Message(
            "assistant",
            "Checking.",
            (
                ("call_1", "get_weather", '{"city": "Paris", "unit": "c"}'),
                ("call_2", "get_weather", '{"city":"Rome","unit":"c"}'),
            ),
        ),
        Message("tool", "18", tool_call_id="call_1"),
        Message("tool", "21", tool_call_id="call_2"),
        Message("user", "Thanks"),
    ]
    turns = render_messages(history, [])
    assert turns[1] == (
        "assistant",
        "Checking.\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n'
        "</tool_call>\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome", "unit": "c"}}\n'
        "</tool_call>",
    )
    # Consecutive results share one user turn, in order.
    assert turns[2] == (
        "user",
        "<tool_response>\n18\n</tool_response>\n<tool_response>\n21\n</tool_response>",
    )
    assert turns[3] == ("user", "Thanks")
    text = codec.render_chat(turns)
    assert "<|im_start|>user\n<tool_response>\n18\n</tool_response>" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_bad_tools_and_calls_name_the_field() -> None:
    cases = [
        ([("bad name", "", "", False)], "tools[0].function.name"),
        ([("a", "", "", False), ("a", "", "", False)], "tools[1].function.name"),
        ([("a", "", "{", False)], "tools[0].function.parameters"),
        ([("a", "", "[]", False)], "tools[0].function.parameters"),
    ]
    for tools, param in cases:
        with pytest.raises(InvalidArgument) as exc:
            tool_specs(tools)
        assert exc.value.param == param
    with pytest.raises(InvalidArgument) as exc:
        render_messages([Message("assistant", "", (("c", "f", "{oops"),))], [])
    assert exc.value.param == "messages[0].tool_calls[0].function.arguments"
    with pytest.raises(InvalidArgument) as exc:
        render_messages([Message("user", "", (("c", "f", "{}"),))], [])
    assert exc.value.param == "messages[0].tool_calls"
    assert tool_specs([("a", "", "", False)])[0].parameters == {"type": "object"}


def _accepts(grammars: Grammars, codec: TextCodec, grammar: str, text: str) -> bool:
    m = grammars.matcher(lark_grammar(grammar), "tools")
    ids = codec.encode(text)
    return m.try_consume_tokens(ids) == len(ids) and m.is_accepting()


def test_the_grammar_allows_exactly_the_documented_calls(
    grammars: Grammars, codec: TextCodec
) -> None:
    paris = call_text("get_weather", {"city": "Paris", "unit": "c"})
    two = paris + "\n" + call_text("add", {"x": 2})
    required = tool_grammar(SPECS, calls_only=True, parallel=True, content=None)
    single = tool_grammar(SPECS, calls_only=True, parallel=False, content=None)
    auto = tool_grammar(SPECS, calls_only=False, parallel=True, content=None)
    assert _accepts(grammars, codec, required, paris)
    assert _accepts(grammars, codec, required, two)
    assert not _accepts(grammars, codec, single, two)
    assert not _accepts(grammars, codec, required, "Sunny.")
    # Arguments are checked against the tool's own schema (strict: no extra property).
    assert not _accepts(grammars, codec, required, call_text("get_weather", {"city": "P"}))
    extra = {"city": "P", "unit": "c", "x": 1}
    assert not _accepts(grammars, codec, required, call_text("get_weather", extra))
    assert _accepts(grammars, codec, required, call_text("add", {"x": 1, "y": 2}))  # not strict
    assert not _accepts(grammars, codec, required, call_text("nope", {}))
    assert _accepts(grammars, codec, auto, "Sunny, 18 degrees.")
    assert _accepts(grammars, codec, auto, paris)
    assert not _accepts(grammars, codec, auto, "<b>bold</b>")


def _assemble(deltas: list[CallDelta]) -> list[dict]:
    calls: list[dict] = []
    for d in deltas:
        if d.id:
            assert d.index == len(calls)
            calls.append({"id": d.id, "name": d.name, "arguments": d.arguments})
        else:
            calls[d.index]["arguments"] += d.arguments
    return calls


def test_streamed_calls_assemble_whatever_the_pieces() -> None:
    args = [{"city": 'Pa"ris {x}', "unit": "c"}, {"x": [1, {"y": "]"}]}]
    text = call_text("get_weather", args[0]) + "\n" + call_text("add", args[1])
    for size in (1, 2, 5, 17, len(text)):
        stream = ToolCallStream(calls_only=True)
        deltas: list[CallDelta] = []
        for i in range(0, len(text), size):
            content, pieces = stream.feed(text[i : i + size])
            assert content == ""
            deltas += pieces
        calls = _assemble(deltas)
        assert [c["name"] for c in calls] == ["get_weather", "add"]
        assert [json.loads(c["arguments"]) for c in calls] == args
        assert len({c["id"] for c in calls}) == 2 and all(
            c["id"].startswith("call_") for c in calls
        )
        assert stream.calls == stream.completed == 2


def test_content_passes_through_when_the_model_answers_in_text() -> None:
    stream = ToolCallStream(calls_only=False)
    assert stream.feed("Sunny") == ("Sunny", [])
    assert stream.feed(" <tool_call> is just text now") == (" <tool_call> is just text now", [])
    assert stream.calls == 0
