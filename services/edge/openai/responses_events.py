"""Chat-completion chunks -> the Responses API's streaming events, as a pure state machine.

`ResponseStream` takes the chunk objects of a streamed chat answer (`services.edge.openai.answers`)
and gives the events OpenAI documents, in its order, each with the next `sequence_number` (from
0): `response.created` and `response.in_progress` (`start`); per output item
`response.output_item.added`, then for a message `response.content_part.added`,
`response.output_text.delta`... `response.output_text.done`, `response.content_part.done`, or
for a function call `response.function_call_arguments.delta`... `.done`; then
`response.output_item.done`; and at the end (`finish`) `response.completed` or
`response.incomplete` with the whole response, or (`fail`) `response.failed`. Items open in the
order the chunks start them (text, then each tool call by its index, as both chat paths stream
them); starting one closes the one before. An answer with no output at all gets one empty
message, as the non-streamed translation does, so that both give the same output.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from services.edge.openai.responses_objects import (
    IdFactory,
    call_item,
    message_item,
    random_id,
    status_of,
    text_part,
    usage_object,
)

Event = dict[str, Any]


@dataclass
class _Item:
    kind: str  # "message" or "function_call"
    item_id: str
    index: int  # output_index
    text: str = ""
    call_id: str = ""
    name: str = ""
    chat_index: int = -1  # the chat tool call's index


@dataclass
class ResponseStream:
    """One streamed response: `skeleton` is its `response` object with nothing produced yet."""

    skeleton: dict[str, Any]
    new_id: IdFactory = random_id
    _sequence: int = 0
    _output: list[dict[str, Any]] = field(default_factory=list)
    _open: _Item | None = None
    _finish: Any = None
    _usage: Any = None

    def _event(self, kind: str, **fields: Any) -> Event:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event

    def _snapshot(self, status: str, **fields: Any) -> dict[str, Any]:
        response = copy.deepcopy(self.skeleton)
        response.update(status=status, output=copy.deepcopy(self._output), **fields)
        return response

    def start(self) -> list[Event]:
        return [
            self._event("response.created", response=self._snapshot("in_progress")),
            self._event("response.in_progress", response=self._snapshot("in_progress")),
        ]

    def feed(self, chunk: dict[str, Any]) -> list[Event]:
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        events: list[Event] = []
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str) and delta["content"]:
                events += self._text(delta["content"])
            for call in delta.get("tool_calls") or ():
                events += self._call(call)
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
        return events

    def _text(self, text: str) -> list[Event]:
        events: list[Event] = []
        item = self._open
        if item is None or item.kind != "message":
            events += self._close("completed")
            events += self._open_message()
            item = self._open
        assert item is not None
        item.text += text
        events.append(
            self._event(
                "response.output_text.delta",
                item_id=item.item_id,
                output_index=item.index,
                content_index=0,
                delta=text,
                logprobs=[],
            )
        )
        return events

    def _open_message(self) -> list[Event]:
        item = _Item("message", self.new_id("msg"), len(self._output))
        self._open = item
        self._output.append(message_item(item.item_id, "in_progress", []))
        return [
            self._event(
                "response.output_item.added",
                output_index=item.index,
                item=message_item(item.item_id, "in_progress", []),
            ),
            self._event(
                "response.content_part.added",
                item_id=item.item_id,
                output_index=item.index,
                content_index=0,
                part=text_part(""),
            ),
        ]

    def _call(self, call: Any) -> list[Event]:
        if not isinstance(call, dict):
            return []
        events: list[Event] = []
        function = call.get("function") or {}
        chat_index = call.get("index", 0)
        item = self._open
        if item is None or item.kind != "function_call" or item.chat_index != chat_index:
            events += self._close("completed")
            item = _Item(
                "function_call",
                self.new_id("fc"),
                len(self._output),
                call_id=str(call.get("id") or ""),
                name=str(function.get("name") or ""),
                chat_index=chat_index,
            )
            self._open = item
            added = call_item(item.item_id, "in_progress", item.call_id, item.name, "")
            self._output.append(added)
            events.append(
                self._event("response.output_item.added", output_index=item.index, item=dict(added))
            )
        fragment = function.get("arguments")
        if isinstance(fragment, str) and fragment:
            item.text += fragment
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=item.item_id,
                    output_index=item.index,
                    delta=fragment,
                )
            )
        return events

    def _close(self, status: str) -> list[Event]:
        item, self._open = self._open, None
        if item is None:
            return []
        if item.kind == "message":
            part = text_part(item.text)
            done = message_item(item.item_id, status, [part])
            self._output[item.index] = done
            return [
                self._event(
                    "response.output_text.done",
                    item_id=item.item_id,
                    output_index=item.index,
                    content_index=0,
                    text=item.text,
                    logprobs=[],
                ),
                self._event(
                    "response.content_part.done",
                    item_id=item.item_id,
                    output_index=item.index,
                    content_index=0,
                    part=copy.deepcopy(part),
                ),
                self._event(
                    "response.output_item.done", output_index=item.index, item=copy.deepcopy(done)
                ),
            ]
        done = call_item(item.item_id, status, item.call_id, item.name, item.text)
        self._output[item.index] = done
        return [
            self._event(
                "response.function_call_arguments.done",
                item_id=item.item_id,
                output_index=item.index,
                arguments=item.text,
            ),
            self._event("response.output_item.done", output_index=item.index, item=dict(done)),
        ]

    def finish(self) -> tuple[list[Event], dict[str, Any]]:
        """The closing events of a finished stream, and the whole response they end with."""
        status, reason = status_of(self._finish)
        item_status = "incomplete" if status == "incomplete" else "completed"
        events: list[Event] = []
        if not self._output:
            events += self._open_message()
        events += self._close(item_status)
        response = self._snapshot(
            status,
            usage=usage_object(self._usage),
            incomplete_details={"reason": reason} if reason else None,
        )
        kind = "response.completed" if status == "completed" else "response.incomplete"
        events.append(self._event(kind, response=copy.deepcopy(response)))
        return events, response

    def fail(self, error: dict[str, Any]) -> list[Event]:
        """The event that ends a stream whose answer failed after it began (`error` is OpenAI's
        error object); what was produced so far stays in the response, marked incomplete."""
        item = self._open
        if item is not None:
            if item.kind == "message":
                self._output[item.index] = message_item(
                    item.item_id, "incomplete", [text_part(item.text)]
                )
            else:
                self._output[item.index] = call_item(
                    item.item_id, "incomplete", item.call_id, item.name, item.text
                )
        message = str(error.get("message") or "The response failed.")
        response = self._snapshot(
            "failed",
            usage=usage_object(self._usage) if self._usage else None,
            error={"code": "server_error", "message": message},
        )
        return [self._event("response.failed", response=response)]
