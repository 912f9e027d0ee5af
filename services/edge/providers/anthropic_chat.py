"""OpenAI chat completions <-> Anthropic Messages, as pure functions (no I/O).

`chat_to_messages` turns a chat-completions request body into a Messages request body,
`message_to_completion` a Message into a `chat.completion`, and `StreamTranslator` Messages
stream events into `chat.completion.chunk` objects. A field a client sends is honoured,
translated, or refused with a 400 naming it (`APIError`, code `unsupported_parameter` or
`invalid_value`); nothing is dropped without saying so here.

Request fields (translated, accepted, or refused naming the field):

- messages: system/developer messages -> `system` (a string, or text blocks where a part carries
  `cache_control`), wherever they stand in the list; turns of one role are merged; tool messages
  -> `tool_result` blocks, the results first in their user turn; assistant `tool_calls` ->
  `tool_use` blocks after the assistant's text.
- max_completion_tokens, max_tokens -> `max_tokens` (the smaller where both are sent); absent:
  the operator's default (plus the thinking budget with reasoning_effort).
- temperature 0..1 forwarded, above 1 refused (Anthropic's range is 0..1); top_p, top_k (a
  non-standard extension) forwarded; stop -> `stop_sequences`.
- user, safety_identifier -> `metadata.user_id` (refused when both are sent and differ).
- tools (function tools), tool_choice, parallel_tool_calls -> `tools`, `tool_choice` (none,
  auto, required -> any, a named function -> tool), `disable_parallel_tool_use`; a function's
  `strict: true` -> the tool's `strict: true` (Anthropic's strict tool use). Custom tools and
  allowed_tools choices are refused.
- response_format, reasoning_effort: see below.
- stream is carried over; stream_options only with stream (the caller reads include_usage;
  include_obfuscation is accepted and has no effect: no obfuscation padding is added).
- service_tier: "auto" (the default on both) accepted, "default" -> `standard_only`, others
  refused.
- prompt_cache_key: accepted with no effect, a routing hint for OpenAI's cache (Anthropic caches
  by `cache_control`).
- n, logprobs, top_logprobs, presence_penalty, frequency_penalty, logit_bias, seed, audio,
  modalities, prediction, store, metadata, verbosity, web_search_options, moderation,
  prompt_cache_retention, prompt_cache_options, functions, function_call: no Anthropic
  equivalent; accepted only at the value that changes nothing (n 1, logprobs false, top_logprobs
  0, penalties 0, logit_bias {}, modalities ["text"], store false, metadata {}, verbosity
  "medium", otherwise null), refused naming the field at any other.
- Anything else: refused naming it ("Unrecognized request argument supplied").

Content parts: text; `image_url` with an http(s) URL -> a URL image block, with a base64 data
URL of image/jpeg|png|gif|webp -> a base64 image block (other data URLs refused naming the part);
`file` with base64 PDF `file_data` (a data URL or bare base64 starting with %PDF) -> a `document`
block titled by `filename`; `input_audio` and `file_id` refused (no Anthropic equivalent).
Judgement calls, accepted with no effect: a message's `name` (Anthropic turns carry no names),
an image's `detail` (Anthropic sizes images itself), empty `annotations` on a replayed assistant
message. Not in OpenAI's reference but passed on: `cache_control` on a content part (Anthropic
prompt caching), like `top_k`. An assistant `refusal` (field or part) is sent as its text; an
assistant message with nothing in it is left out (the API refuses empty turns). A trailing
assistant message goes as the last turn, which Anthropic treats as a prefill of the answer.
A tool call's `arguments` must be a JSON object string; "" (what some clients send for a call
without arguments) counts as {}.

Structured output: `json_schema` with `strict: true` (what the OpenAI SDK's `parse()` sends) ->
Anthropic's own structured output, `output_config: {"format": {"type": "json_schema", "schema":
...}}`, generally available on the Messages API with no beta header (models that lack it answer
with their own 400). `json_object`, and `json_schema` without strict (whose schemas need not meet
the rules of constrained decoding), go through the documented equivalent: a forced tool named
`json_response` whose input_schema is the schema (`{"type": "object"}` for json_object); its
`tool_use` input comes back as the message's JSON `content` (streams: its `input_json_delta`
fragments as `delta.content`) with finish_reason "stop". Beside client tools, tool_choice auto
becomes `any`, so that a turn ends either in client tool calls or in the JSON answer; a client
tool of that name is refused (tools[i].function.name). No beta
header is needed by anything here; the second element of `chat_to_messages`'s result stays for
one that a future translation may need.

reasoning_effort -> `thinking: {"type": "enabled", "budget_tokens": B}`, B from
`THINKING_BUDGETS` (minimal 1024, low 2048, medium 8192, high 16384, xhigh 32768, max 65536).
With a client cap C (OpenAI counts reasoning in it, as Anthropic counts thinking in max_tokens),
B = min(table, max(1024, C // 2)) and C must exceed 1024; without one, max_tokens is the default
plus B. What the API refuses beside thinking is refused naming the client's field: temperature
other than 1, top_k, top_p under 0.95, tool_choice required or named, a forced-tool JSON format,
and continuing after tool results (the thinking before the calls cannot be sent back in OpenAI
messages). Thinking blocks in answers are never shown as content.

Answers: text blocks -> `content`; `tool_use` -> `message.tool_calls` (arguments as a JSON
string) and finish_reason "tool_calls"; stop reasons end_turn/stop_sequence/pause_turn -> stop,
max_tokens/model_context_window_exceeded -> length, tool_use -> tool_calls, refusal ->
content_filter. Usage: prompt_tokens = input + cache read + cache creation tokens (all billed by
the provider), completion_tokens = output tokens (message_delta's cumulative count over
message_start's placeholder), prompt_tokens_details.cached_tokens = cache reads, plus Anthropic's
`cache_read_input_tokens` / `cache_creation_input_tokens` as given when the provider reports them.
"""

from __future__ import annotations

import json
from typing import Any

from services.edge.providers.anthropic_chat_request import (
    JSON_TOOL,
    THINKING_BUDGETS,
    chat_to_messages,
)

__all__ = [
    "ERROR_STATUS",
    "STOP_REASONS",
    "THINKING_BUDGETS",
    "AnthropicStreamError",
    "StreamTranslator",
    "chat_to_messages",
    "completion_usage",
    "message_to_completion",
]

STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# The HTTP status of each Messages API error type outside a stream, so that an error event in a
# stream can be treated like the same error before it.
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
_CACHE_FIELDS = ("cache_read_input_tokens", "cache_creation_input_tokens")


class AnthropicStreamError(Exception):
    """An `error` event inside a Messages stream: the stream ends here."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message
        self.status = ERROR_STATUS.get(error_type, 500)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def completion_usage(anthropic_usage: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's usage object from Anthropic's usage counts."""
    inputs = _int(anthropic_usage.get("input_tokens"))
    read = _int(anthropic_usage.get("cache_read_input_tokens"))
    created = _int(anthropic_usage.get("cache_creation_input_tokens"))
    output = _int(anthropic_usage.get("output_tokens"))
    prompt = inputs + read + created
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": output,
        "total_tokens": prompt + output,
        "prompt_tokens_details": {"cached_tokens": read},
    }
    for name in _CACHE_FIELDS:
        if anthropic_usage.get(name) is not None:
            usage[name] = _int(anthropic_usage[name])
    return usage


def _finish_reason(stop_reason: Any, client_calls: int, json_answered: bool) -> str:
    if stop_reason == "tool_use" and json_answered and not client_calls:
        return "stop"  # The forced JSON tool carried the answer.
    return STOP_REASONS.get(str(stop_reason), "stop")


def message_to_completion(
    message: dict[str, Any], *, model: str, completion_id: str, created: int
) -> dict[str, Any]:
    """An Anthropic Message (non-streamed response body) -> an OpenAI `chat.completion`."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    json_answered = False
    for block in message.get("content") or []:
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text") or ""))
        elif kind == "tool_use" and block.get("name") == JSON_TOOL:
            texts.append(json.dumps(block.get("input") or {}))
            json_answered = True
        elif kind == "tool_use":
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {
                        "name": block.get("name"),
                        "arguments": json.dumps(block.get("input") or {}),
                    },
                }
            )
        # thinking, redacted_thinking and server tool blocks have nothing for the client.
    reply: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not calls else None,
        "refusal": None,
        "annotations": [],
    }
    if calls:
        reply["tool_calls"] = calls
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": reply,
                "logprobs": None,
                "finish_reason": _finish_reason(
                    message.get("stop_reason"), len(calls), json_answered
                ),
            }
        ],
        "usage": completion_usage(message.get("usage") or {}),
    }


class StreamTranslator:
    """Anthropic Messages stream events -> OpenAI `chat.completion.chunk` objects.

    `feed` takes one parsed SSE event and returns the chunks to send for it: message_start ->
    the role chunk (`{"role": "assistant"}` alone, so that an answer of tool calls only keeps
    null content); text and JSON-answer deltas -> content chunks; a client tool_use block start
    -> a tool_calls chunk with index, id, type, name and `arguments: ""`, and its input_json_delta
    -> argument fragments; message_delta with a stop reason -> the finish chunk; message_stop ->
    nothing, or the usage chunk (empty choices) when `include_usage`. With `include_usage`, every
    other chunk carries `usage: null`, as OpenAI's do. ping, thinking and unknown events -> [].
    `usage()` is the usage so far (final after message_stop), e.g. to bill a broken stream.
    """

    def __init__(
        self, *, model: str, completion_id: str, created: int, include_usage: bool
    ) -> None:
        self.model = model
        self.completion_id = completion_id
        self.created = created
        self.include_usage = include_usage
        self.finished = False
        self.finish_reason: str | None = None
        self._usage: dict[str, Any] = {}
        # Anthropic's block index -> ("text" | "json" | "tool", OpenAI tool_calls index).
        self._blocks: dict[int, tuple[str, int]] = {}
        self._calls = 0
        self._json_answered = False

    def usage(self) -> dict[str, Any]:
        return completion_usage(self._usage)

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def _read_usage(self, usage: Any) -> None:
        if isinstance(usage, dict):
            # Counts are cumulative: a later event's number replaces the earlier one.
            self._usage.update({k: v for k, v in usage.items() if v is not None})

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        kind = event.get("type")
        if kind == "message_start":
            self._read_usage((event.get("message") or {}).get("usage"))
            # The role alone: whether text follows is not known yet, and OpenAI's content is
            # null in an answer that is only tool calls.
            return [self._chunk({"role": "assistant"})]
        if kind == "content_block_start":
            return self._block_start(_int(event.get("index")), event.get("content_block") or {})
        if kind == "content_block_delta":
            return self._block_delta(_int(event.get("index")), event.get("delta") or {})
        if kind == "message_delta":
            self._read_usage(event.get("usage"))
            reason = (event.get("delta") or {}).get("stop_reason")
            if reason is None:
                return []
            self.finish_reason = _finish_reason(reason, self._calls, self._json_answered)
            return [self._chunk({}, self.finish_reason)]
        if kind == "message_stop":
            self.finished = True
            if not self.include_usage:
                return []
            return [
                {
                    "id": self.completion_id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "choices": [],
                    "usage": self.usage(),
                }
            ]
        if kind == "error":
            err = event.get("error") or {}
            err_type = str(err.get("type") or "api_error")
            raise AnthropicStreamError(err_type, str(err.get("message") or err_type))
        return []  # ping, content_block_stop and event types added later carry nothing.

    def _block_start(self, index: int, block: dict[str, Any]) -> list[dict[str, Any]]:
        kind = block.get("type")
        if kind == "text":
            self._blocks[index] = ("text", -1)
            text = block.get("text")
            return [self._chunk({"content": text})] if text else []
        if kind == "tool_use" and block.get("name") == JSON_TOOL:
            self._blocks[index] = ("json", -1)
            self._json_answered = True
            return []
        if kind == "tool_use":
            call = self._calls
            self._calls += 1
            self._blocks[index] = ("tool", call)
            first = {
                "index": call,
                "id": block.get("id"),
                "type": "function",
                "function": {"name": block.get("name"), "arguments": ""},
            }
            chunks = [self._chunk({"tool_calls": [first]})]
            if block.get("input"):  # Normally {} at the start, the input following in deltas.
                chunks.append(self._arguments(call, json.dumps(block["input"])))
            return chunks
        return []  # thinking, redacted_thinking and server tool blocks are not shown.

    def _arguments(self, call: int, fragment: str) -> dict[str, Any]:
        return self._chunk({"tool_calls": [{"index": call, "function": {"arguments": fragment}}]})

    def _block_delta(self, index: int, delta: dict[str, Any]) -> list[dict[str, Any]]:
        role, call = self._blocks.get(index, ("", -1))
        kind = delta.get("type")
        if kind == "text_delta" and role == "text" and delta.get("text"):
            return [self._chunk({"content": delta["text"]})]
        if kind == "input_json_delta" and delta.get("partial_json"):
            if role == "json":
                return [self._chunk({"content": delta["partial_json"]})]
            if role == "tool":
                return [self._arguments(call, delta["partial_json"])]
        return []  # thinking, signature and citation deltas have nothing for the client.
