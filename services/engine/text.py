"""Text in and out of the model: the chat template, tokenizing, incremental detokenizing, stops.

The chat template is the model's own Jinja template, rendered in a sandbox; detokenizing uses
`tokenizers`' `DecodeStream`, which emits only complete UTF-8 text and never re-decodes the whole
sequence per token.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import llguidance
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

from services.common.errors import InvalidArgument


def _raise(message: str) -> None:
    raise TemplateError(message)


@dataclass
class TextCodec:
    """Tokenizer plus chat template of one exported model folder."""

    tokenizer: Tokenizer
    chat_template: str
    bos_token: str = ""
    eos_token: str = ""
    _template: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self._template = env.from_string(self.chat_template)

    @classmethod
    def from_folder(cls, folder: Path) -> TextCodec:
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        config: dict[str, Any] = {}
        if (folder / "tokenizer_config.json").exists():
            config = json.loads((folder / "tokenizer_config.json").read_text())
        template = config.get("chat_template")
        if (folder / "chat_template.jinja").exists():
            template = (folder / "chat_template.jinja").read_text()
        if not template:
            raise RuntimeError(f"no chat template in {folder}")

        def token_text(value: Any) -> str:
            return value.get("content", "") if isinstance(value, dict) else (value or "")

        return cls(
            tokenizer,
            template,
            bos_token=token_text(config.get("bos_token")),
            eos_token=token_text(config.get("eos_token")),
        )

    def render_chat(self, messages: Sequence[tuple[str, str]]) -> str:
        # "developer" is OpenAI's newer name for the system role.
        msgs = [
            {"role": "system" if role == "developer" else role, "content": content}
            for role, content in messages
        ]
        try:
            return str(
                self._template.render(
                    messages=msgs,
                    add_generation_prompt=True,
                    bos_token=self.bos_token,
                    eos_token=self.eos_token,
                )
            )
        except TemplateError as exc:
            raise InvalidArgument(f"messages: {exc}", param="messages") from None

    def encode(self, text: str) -> list[int]:
        # Special tokens written in the rendered template (e.g. <|im_start|>) are matched as such.
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def decoder(self) -> DecodeStream:
        return DecodeStream(skip_special_tokens=True)

    def grammar_tokenizer(self, eos_token_ids: Sequence[int]) -> llguidance.LLTokenizer:
        """The same tokenizer in llguidance's form, for constrained decoding (about 0.3 s)."""
        return llguidance.LLTokenizer(self.tokenizer.to_str(), eos_token=list(eos_token_ids))


class TokenTable:
    """Each token's exact bytes and its text as logprobs report it."""

    def __init__(self, vocab_size: int, bytes_of: Callable[[int], bytes]) -> None:
        self.bytes = [bytes_of(i) for i in range(vocab_size)]

    @classmethod
    def from_grammar_tokenizer(cls, tokenizer: llguidance.LLTokenizer) -> TokenTable:
        return cls(tokenizer.vocab_size, lambda i: tokenizer.decode_bytes([i]))

    def of(self, token: int) -> bytes:
        return self.bytes[token] if 0 <= token < len(self.bytes) else b""

    def text(self, token: int) -> str:
        """The token's bytes as UTF-8; bytes of a character split across tokens as \\xNN."""
        return self.of(token).decode("utf-8", errors="backslashreplace")


class StopMatcher:
    """Holds back text that may be the start of a stop string; finds the first full match.

    `feed` returns the text that is safe to emit now and whether a stop string was reached. Text
    after (and including) the stop string is never emitted.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        if not self.stops:
            return text, False
        buf = self.held + text
        first = min((i for i in (buf.find(s) for s in self.stops) if i >= 0), default=-1)
        if first >= 0:
            self.held = ""
            return buf[:first], True
        keep = 0
        for stop in self.stops:
            # The longest suffix of buf that is a proper prefix of this stop string.
            for n in range(min(len(stop) - 1, len(buf)), 0, -1):
                if buf.endswith(stop[:n]):
                    keep = max(keep, n)
                    break
        self.held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        """Text held back when generation ends without reaching a stop string."""
        out, self.held = self.held, ""
        return out
