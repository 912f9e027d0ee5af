"""The engine's stream messages as OpenAI's choices: whole (`Collected`) or chunk by chunk
(`chunk_choices`), for chat and for the legacy completions endpoint.

Messages of several choices (`n`) interleave; each carries its choice's `index`. Text, tool-call
deltas (a call's first delta has its id and name, later ones fragments of its arguments) and
per-token logprobs map one to one onto OpenAI's fields. A named `tool_choice` finishes with
"stop", as OpenAI's does; `auto` and `required` calls finish with "tool_calls".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.pb.engine.v1 import engine_pb2


def wire_float(value: float) -> float:
    """A proto float32 as its shortest decimal: -0.1, not -0.10000000149011612."""
    return float(f"{value:.8g}")


def logprob_entry(lp: engine_pb2.TokenLogprob) -> dict[str, Any]:
    return {
        "token": lp.token,
        "logprob": wire_float(lp.logprob),
        "bytes": list(lp.token_bytes),
        "top_logprobs": [
            {"token": t.token, "logprob": wire_float(t.logprob), "bytes": list(t.token_bytes)}
            for t in lp.top_logprobs
        ],
    }


def finish_reason(reason: str, named_function: bool) -> str:
    if reason == "tool_calls" and named_function:
        return "stop"
    return reason or "stop"


def tool_call_delta(d: engine_pb2.ToolCallDelta) -> dict[str, Any]:
    if d.id:
        return {
            "index": d.index,
            "id": d.id,
            "type": "function",
            "function": {"name": d.name, "arguments": d.arguments},
        }
    return {"index": d.index, "function": {"arguments": d.arguments}}


@dataclass
class _Choice:
    text: list[str] = field(default_factory=list)
    calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    logprobs: list[engine_pb2.TokenLogprob] = field(default_factory=list)
    finish: str = ""


@dataclass
class Collected:
    """Every choice of a non-streamed answer, assembled from the engine's messages."""

    chat: bool
    logprobs: bool
    named_function: bool = False
    prompt_length: int = 0  # characters of a legacy prompt: where text_offset starts
    choices: dict[int, _Choice] = field(default_factory=dict)

    def add(self, msg: engine_pb2.GenerateResponse) -> None:
        choice = self.choices.setdefault(msg.index, _Choice())
        choice.text.append(msg.text)
        choice.logprobs.extend(msg.logprobs)
        for d in msg.tool_calls:
            call = choice.calls.setdefault(d.index, {"id": "", "name": "", "arguments": []})
            call["id"] = call["id"] or d.id
            call["name"] = call["name"] or d.name
            call["arguments"].append(d.arguments)
        if msg.finish_reason:
            choice.finish = msg.finish_reason

    def payload(self) -> list[dict[str, Any]]:
        return [
            self._chat(i, c) if self.chat else self._text(i, c)
            for i, c in sorted(self.choices.items())
        ]

    def _chat(self, index: int, c: _Choice) -> dict[str, Any]:
        text = "".join(c.text)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": text if text or not c.calls else None,
            "refusal": None,
        }
        if c.calls:
            message["tool_calls"] = [
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["name"], "arguments": "".join(call["arguments"])},
                }
                for _, call in sorted(c.calls.items())
            ]
        logprobs = None
        if self.logprobs:
            logprobs = {"content": [logprob_entry(lp) for lp in c.logprobs], "refusal": None}
        return {
            "index": index,
            "message": message,
            "logprobs": logprobs,
            "finish_reason": finish_reason(c.finish, self.named_function),
        }

    def _text(self, index: int, c: _Choice) -> dict[str, Any]:
        return {
            "index": index,
            "text": "".join(c.text),
            "logprobs": legacy_logprobs(c.logprobs, self.prompt_length) if self.logprobs else None,
            "finish_reason": c.finish or "stop",
        }


def legacy_logprobs(entries: list[engine_pb2.TokenLogprob], offset: int) -> dict[str, Any]:
    """The legacy completions endpoint's logprobs: parallel lists, offsets into the text."""
    offsets = []
    for lp in entries:
        offsets.append(offset)
        offset += len(lp.token)
    return {
        "tokens": [lp.token for lp in entries],
        "token_logprobs": [wire_float(lp.logprob) for lp in entries],
        "top_logprobs": [
            {t.token: wire_float(t.logprob) for t in lp.top_logprobs} for lp in entries
        ],
        "text_offset": offsets,
    }


@dataclass
class ChunkChoices:
    """One engine message as the `choices` of stream chunks: its delta, then (on its choice's
    last message) the finish chunk's."""

    chat: bool
    logprobs: bool
    named_function: bool = False
    prompt_length: int = 0
    started: set[int] = field(default_factory=set)
    offsets: dict[int, int] = field(default_factory=dict)

    def of(self, msg: engine_pb2.GenerateResponse) -> list[list[dict[str, Any]]]:
        """The choices lists of the chunks this message becomes (possibly none)."""
        out: list[list[dict[str, Any]]] = []
        first = msg.index not in self.started
        has_output = bool(msg.text or msg.tool_calls or msg.logprobs)
        if first or has_output:
            self.started.add(msg.index)
            out.append([self._delta(msg, first)])
        if msg.finish_reason:
            out.append([self._finish(msg)])
        return out

    def _delta(self, msg: engine_pb2.GenerateResponse, first: bool) -> dict[str, Any]:
        if not self.chat:
            offset = self.offsets.get(msg.index, self.prompt_length)
            logprobs = None
            if self.logprobs:
                logprobs = legacy_logprobs(list(msg.logprobs), offset)
                self.offsets[msg.index] = offset + sum(len(lp.token) for lp in msg.logprobs)
            return {
                "index": msg.index,
                "text": msg.text,
                "logprobs": logprobs,
                "finish_reason": None,
            }
        delta: dict[str, Any] = {}
        if first:
            delta["role"] = "assistant"
        if msg.text or not msg.tool_calls:
            delta["content"] = msg.text
        if msg.tool_calls:
            delta["tool_calls"] = [tool_call_delta(d) for d in msg.tool_calls]
        logprobs = None
        if self.logprobs and msg.logprobs:
            logprobs = {"content": [logprob_entry(lp) for lp in msg.logprobs], "refusal": None}
        return {"index": msg.index, "delta": delta, "logprobs": logprobs, "finish_reason": None}

    def _finish(self, msg: engine_pb2.GenerateResponse) -> dict[str, Any]:
        if not self.chat:
            return {
                "index": msg.index,
                "text": "",
                "logprobs": None,
                "finish_reason": msg.finish_reason or "stop",
            }
        return {
            "index": msg.index,
            "delta": {},
            "logprobs": None,
            "finish_reason": finish_reason(msg.finish_reason, self.named_function),
        }
