"""Wire schemas of the OpenAI requests for hosted models, ordered like the OpenAI reference.

Field policy: a field a client sends is honoured, accepted at a value that changes nothing, or
refused with a 400 naming it — never silently dropped:

- honoured: messages (text content; assistant `tool_calls`; `tool` results), frequency_penalty,
  logit_bias, logprobs, top_logprobs, max_completion_tokens / max_tokens, n,
  parallel_tool_calls, presence_penalty, response_format (text, json_object, json_schema with
  strict), seed, stop, stream, stream_options.include_usage, temperature, tool_choice, tools
  (function tools), top_p, and `top_k` (not in OpenAI's reference, common across compatible
  servers);
- accepted with no effect: `user` and `safety_identifier` (end-user ids that OpenAI uses for
  abuse monitoring; Sluice's ledger names the key instead), `prompt_cache_key` (a routing hint
  for a provider's prompt cache), `stream_options.include_obfuscation`, a message's `name`,
  an assistant message's empty `annotations` and null `refusal`/`audio`/`function_call`, and
  the values that change nothing of: store (false), metadata ({}), modalities (["text"]),
  service_tier ("auto", "default"), verbosity ("medium"), reasoning_effort, audio, prediction,
  web_search_options, functions, function_call (null);
- refused naming the field: any other value of those, non-text content parts (the hosted models
  read text only), and every field this module does not know ("Unrecognized request argument").
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.edge.errors import UnsupportedField
from services.edge.limits import MAX_MODEL_CHARS, MAX_STOP_CHARS, MAX_TOOLS

# Values of fields the hosted models have no use for that change nothing (see the module doc).
NO_OP_VALUES: dict[str, tuple[Any, ...]] = {
    "store": (None, False),
    "metadata": (None, {}),
    "modalities": (None, ["text"]),
    "service_tier": (None, "auto", "default"),
    "verbosity": (None, "medium"),
    "reasoning_effort": (None,),
    "audio": (None,),
    "prediction": (None,),
    "web_search_options": (None,),
    "functions": (None,),
    "function_call": (None,),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Strict):
    type: Literal["text", "refusal"]
    text: str | None = None
    refusal: str | None = None
    # Prompt caching hints of other providers; no effect here.
    cache_control: dict[str, Any] | None = None

    def value(self) -> str:
        return (self.text if self.type == "text" else self.refusal) or ""


class FunctionCall(_Strict):
    name: str = Field(min_length=1, max_length=64)
    arguments: str


class ToolCall(_Strict):
    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None
    annotations: list[Any] | None = None
    audio: None = None
    function_call: None = None

    @field_validator("content")
    @classmethod
    def _text_parts_only(
        cls, value: str | list[dict[str, Any]] | None
    ) -> str | list[dict[str, Any]] | None:
        if isinstance(value, list):
            for i, part in enumerate(value):
                kind = part.get("type")
                if kind not in ("text", "refusal"):
                    raise UnsupportedField(
                        f"[{i}].type",
                        f"Content parts of type {kind!r} are not supported by this model: "
                        "it reads text only.",
                    )
                TextPart.model_validate(part)
        return value

    @model_validator(mode="after")
    def _roles(self) -> ChatMessage:
        if self.tool_calls and self.role != "assistant":
            raise UnsupportedField("tool_calls", "Only assistant messages carry tool_calls.")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id it answers")
        if self.annotations:
            raise UnsupportedField("annotations", "Message annotations are not supported.")
        return self

    def text(self) -> str:
        """The message's text: content parts joined (a refusal counts as the text it says)."""
        if self.content is None:
            return self.refusal or ""
        if isinstance(self.content, str):
            return self.content
        return "".join(TextPart.model_validate(p).value() for p in self.content)


class StreamOptions(_Strict):
    include_usage: bool = False
    # Padding OpenAI adds against side channels; no effect here.
    include_obfuscation: bool | None = None


class FunctionDefinition(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionTool(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Strict):
    name: str = Field(min_length=1)


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(_Strict):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("a json_schema response format needs its json_schema")
        return self


class _SamplingFields(_Strict):
    """Fields shared by both endpoints, with OpenAI's documented ranges."""

    model: str = Field(min_length=1, max_length=MAX_MODEL_CHARS)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    max_tokens: int | None = Field(default=None, ge=1, lt=2**31)
    n: int | None = Field(default=None, ge=1, le=128)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63)
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    # Not in OpenAI's reference but common across compatible servers (vLLM, TGI).
    top_k: int | None = Field(default=None, ge=0, lt=2**31)
    user: str | None = None
    safety_identifier: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        for stop in [value] if isinstance(value, str) else value or ():
            if not stop:
                raise ValueError("stop sequences must not be empty")
            if len(stop) > MAX_STOP_CHARS:
                raise ValueError(f"stop sequences must be at most {MAX_STOP_CHARS} characters")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key in value or {}:
            if not key.isdigit() or int(key) >= 2**31:
                raise ValueError(f"logit_bias keys are token ids; {key!r} is not one")
        return value

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def choices(self) -> int:
        return self.n or 1

    def token_bias(self) -> dict[int, float]:
        return {int(k): v for k, v in (self.logit_bias or {}).items()}


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    max_completion_tokens: int | None = Field(default=None, ge=1, lt=2**31)
    tools: list[FunctionTool] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    prompt_cache_key: str | None = None
    # Fields accepted only at values that change nothing (NO_OP_VALUES).
    store: Any = None
    metadata: Any = None
    modalities: Any = None
    service_tier: Any = None
    verbosity: Any = None
    reasoning_effort: Any = None
    audio: Any = None
    prediction: Any = None
    web_search_options: Any = None
    functions: Any = None
    function_call: Any = None

    @model_validator(mode="after")
    def _chat_fields(self) -> ChatCompletionRequest:
        for name, allowed in NO_OP_VALUES.items():
            if getattr(self, name) not in allowed:
                raise UnsupportedField(
                    name, f"'{name}' is not supported by this model at that value."
                )
        if self.top_logprobs and not self.logprobs:
            raise UnsupportedField("top_logprobs", "top_logprobs needs logprobs: true.")
        if self.tool_choice is not None and not self.tools and self.tool_choice != "none":
            raise UnsupportedField("tool_choice", "tool_choice needs tools.")
        if isinstance(self.tool_choice, NamedToolChoice):
            names = {t.function.name for t in self.tools or ()}
            if self.tool_choice.function.name not in names:
                raise UnsupportedField(
                    "tool_choice", f"No tool named '{self.tool_choice.function.name}'."
                )
        return self

    def token_limit(self) -> int | None:
        # max_completion_tokens supersedes the deprecated max_tokens in OpenAI's API.
        return self.max_completion_tokens or self.max_tokens

    def named_function(self) -> str | None:
        choice = self.tool_choice
        return choice.function.name if isinstance(choice, NamedToolChoice) else None


class CompletionRequest(_SamplingFields):
    prompt: str | list[str]
    echo: bool | None = False
    logprobs: int | None = Field(default=None, ge=0, le=5)
    suffix: str | None = None
    best_of: int | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("exactly one prompt string is supported")
        return value

    @model_validator(mode="after")
    def _completion_unsupported(self) -> CompletionRequest:
        if self.echo:
            raise UnsupportedField("echo", "echo is not supported")
        if self.suffix:
            raise UnsupportedField("suffix", "suffix is not supported")
        if self.best_of not in (None, self.n or 1):
            raise UnsupportedField("best_of", "best_of must equal n (no server-side ranking)")
        return self

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def token_limit(self) -> int | None:
        # The legacy endpoint defaults to 16 tokens, as OpenAI's does.
        return self.max_tokens if self.max_tokens is not None else 16


def schema_text(schema: dict[str, Any] | None) -> str:
    """A JSON schema as the engine takes it: JSON text, keys in the client's order."""
    return "" if schema is None else json.dumps(schema, ensure_ascii=False)
