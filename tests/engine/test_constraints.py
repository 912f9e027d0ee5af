"""Compiling response formats with llguidance, the strict closing of schemas, and masks."""

from __future__ import annotations

import json
from pathlib import Path

import llguidance
import numpy as np
import pytest

from services.common.errors import InvalidArgument
from services.engine.constraints import (
    Grammars,
    MaskBatch,
    closed,
    json_grammar,
    json_schema,
    parse_schema,
)
from services.engine.text import TextCodec

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "address": {"type": "object", "properties": {"city": {"type": "string"}}},
        "pets": {"type": "array", "items": {"type": "object", "properties": {"n": {}}}},
        "either": {"anyOf": [{"type": "object"}, {"type": "null"}]},
        "both": {"allOf": [{"properties": {"a": {}}}, {"properties": {"b": {}}}]},
        "map": {"type": "object", "additionalProperties": {"type": "integer"}},
    },
    "$defs": {"thing": {"type": "object", "properties": {"id": {"type": "integer"}}}},
}


@pytest.fixture(scope="module")
def codec(model_folder: Path) -> TextCodec:
    return TextCodec.from_folder(model_folder)


@pytest.fixture(scope="module")
def grammars(codec: TextCodec) -> Grammars:
    return Grammars(codec.grammar_tokenizer([2]))


def test_strict_closes_every_object_that_does_not_say_otherwise() -> None:
    out = closed(PERSON)
    props = out["properties"]
    assert out["additionalProperties"] is False
    assert props["address"]["additionalProperties"] is False
    assert props["pets"]["items"]["additionalProperties"] is False
    assert props["either"]["anyOf"][0]["additionalProperties"] is False
    assert "additionalProperties" not in props["either"]["anyOf"][1]
    # allOf parts stay open: closing each would forbid the other's property.
    assert all("additionalProperties" not in p for p in props["both"]["allOf"])
    assert props["map"]["additionalProperties"] == {"type": "integer"}
    assert out["$defs"]["thing"]["additionalProperties"] is False
    assert "additionalProperties" not in PERSON  # the caller's schema is left alone
    # A property *named* like a keyword is a property, not a subschema.
    odd = closed({"type": "object", "properties": {"items": {"type": "string"}}})
    assert odd["properties"]["items"] == {"type": "string"}


def test_layout_is_compact_and_order_is_kept() -> None:
    schema = json_schema({"type": "object", "properties": {"b": {}, "a": {}}}, strict=True)
    assert schema["x-guidance"] == {
        "whitespace_flexible": False,
        "item_separator": ", ",
        "key_separator": ": ",
    }
    assert list(schema["properties"]) == ["b", "a"]


def test_parse_schema_names_the_field() -> None:
    assert parse_schema("", "p") == {"type": "object"}
    with pytest.raises(InvalidArgument) as exc:
        parse_schema("{nope", "response_format.json_schema.schema")
    assert exc.value.param == "response_format.json_schema.schema"
    with pytest.raises(InvalidArgument):
        parse_schema("[1]", "p")


def _accepts(grammars: Grammars, codec: TextCodec, grammar: str, text: str) -> bool:
    m = grammars.matcher(grammar, "p")
    ids = codec.encode(text)
    return m.try_consume_tokens(ids) == len(ids) and m.is_accepting()


def test_strict_schema_refuses_extra_properties(grammars: Grammars, codec: TextCodec) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    strict, loose = json_grammar(schema, True), json_grammar(schema, False)
    assert _accepts(grammars, codec, strict, '{"a": 1}')
    assert not _accepts(grammars, codec, strict, '{"a": 1, "b": 2}')
    assert _accepts(grammars, codec, loose, '{"a": 1, "b": 2}')
    assert not _accepts(grammars, codec, strict, '{"a":1}')  # compact separators only


def test_compile_errors_name_the_field_and_matchers_are_fresh(
    grammars: Grammars, codec: TextCodec
) -> None:
    bad = json_grammar({"type": "object", "properties": {"a": {"type": "strin"}}}, False)
    with pytest.raises(InvalidArgument) as exc:
        grammars.matcher(bad, "tools[2].function.parameters")
    assert exc.value.param == "tools[2].function.parameters"
    assert "strin" in exc.value.message
    good = json_grammar({"type": "object"}, False)
    ids = codec.encode('{"a": 1}')
    first = grammars.matcher(good, "p")
    assert first.consume_tokens(ids) and first.is_stopped()
    second = grammars.matcher(good, "p")  # from the cache, untouched by the first
    assert not second.is_stopped() and second.try_consume_tokens(ids) == len(ids)


def test_masks_are_computed_for_the_given_rows_only(grammars: Grammars, codec: TextCodec) -> None:
    vocab = codec.tokenizer.get_vocab_size()
    masks = MaskBatch(vocab, 4, grammars.tokenizer.vocab_size)
    try:
        masks.bitmask.fill(0)
        m = grammars.matcher(json_grammar({"type": "object"}, False), "p")
        masks.start([(m, 2)])
        masks.wait()
        allowed = masks.allowed(2)
        assert allowed.size > 0 and all(codec.tokenizer.decode([int(t)])[0] == "{" for t in allowed)
        assert masks.allowed(1).size == 0  # row 1 was not asked for
        ids = codec.encode('{"a": 1}')
        for token in ids:
            masks.start([(m, 0)])
            masks.wait()
            assert token in set(masks.allowed(0).tolist())
            assert m.consume_token(token)
        masks.start([(m, 0)])
        masks.wait()
        assert masks.allowed(0).tolist() == [2] and m.is_stopped()  # only the end remains
    finally:
        masks.close()


def test_grammar_tokenizer_matches_the_models(codec: TextCodec) -> None:
    tok = codec.grammar_tokenizer([2])
    assert isinstance(tok, llguidance.LLTokenizer)
    assert tok.vocab_size == codec.tokenizer.get_vocab_size()
    text = json.dumps({"city": "Zürich"})
    assert tok.decode_bytes(codec.encode(text)) == text.encode()
    assert np.array_equal(tok.tokenize_str(text), codec.encode(text))
