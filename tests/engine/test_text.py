from __future__ import annotations

from pathlib import Path

import pytest

from services.common.errors import InvalidArgument
from services.engine.text import StopMatcher, TextCodec


def test_stop_matcher_cuts_before_the_stop_string() -> None:
    m = StopMatcher(["STOP"])
    assert m.feed("hello ST") == ("hello ", False)
    assert m.feed("OP and more") == ("", True)


def test_stop_matcher_releases_false_prefixes() -> None:
    m = StopMatcher(["STOP"])
    assert m.feed("ST") == ("", False)
    assert m.feed("ART") == ("START", False)
    assert m.flush() == ""


def test_stop_matcher_flushes_held_text_at_the_end() -> None:
    m = StopMatcher(["\n\n"])
    assert m.feed("line\n") == ("line", False)
    assert m.flush() == "\n"


def test_stop_matcher_picks_the_earliest_of_several() -> None:
    m = StopMatcher(["world", "lo"])
    assert m.feed("hello world") == ("hel", True)


def test_no_stops_passes_everything() -> None:
    assert StopMatcher([]).feed("abc") == ("abc", False)


def test_chat_template_is_the_models_own(model_folder: Path) -> None:
    codec = TextCodec.from_folder(model_folder)
    text = codec.render_chat([("user", "Hi")])
    assert text.startswith("<|im_start|>system\n")
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    # Special tokens in the rendered template are single tokens.
    ids = codec.encode(text)
    assert ids[0] == 1 and ids.count(2) == 2


def test_developer_role_is_a_system_message(model_folder: Path) -> None:
    codec = TextCodec.from_folder(model_folder)
    text = codec.render_chat([("developer", "Be brief."), ("user", "Hi")])
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>")


def test_incremental_decoding_never_splits_a_character(model_folder: Path) -> None:
    codec = TextCodec.from_folder(model_folder)
    text = "naïve café — 東京 🌊 done"
    ids = codec.encode(text)
    stream = codec.decoder()
    pieces = [stream.step(codec.tokenizer, i) for i in ids]
    assert "".join(p for p in pieces if p) == text
    assert all("\ufffd" not in p for p in pieces if p)


def test_template_errors_are_invalid_arguments(model_folder: Path) -> None:
    codec = TextCodec.from_folder(model_folder)
    broken = TextCodec(codec.tokenizer, "{{ raise_exception('no tools') }}")
    with pytest.raises(InvalidArgument):
        broken.render_chat([("user", "x")])
