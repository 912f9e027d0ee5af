"""Wire schemas of the OpenAI endpoints the edge serves, ordered like the OpenAI reference.

Unknown-field policy: fields we do not know are accepted and ignored (SDKs add fields faster than
servers learn them), but a known field with a value we cannot honour is a 400 naming the field,
never a silent misbehaviour.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.edge.errors import UnsupportedField


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ContentPart(_Lenient):
    type: str
    text: str | None = None


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def text(self) -> str:
        """Flattens content parts to text; non-text parts are refused at validation time."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content)

    @field_validator("content")
    @classmethod
    def _text_parts_only(
        cls, value: str | list[ContentPart] | None
    ) -> str | list[ContentPart] | None:
        if isinstance(value, list):
            for part in value:
                if part.type != "text":
                    raise ValueError(f"content part type {part.type!r} is not supported")
        return value


class StreamOptions(_Lenient):
    include_usage: bool = False


class _SamplingFields(_Lenient):
    """Fields shared by both endpoints, with OpenAI's documented ranges."""

    model: str = Field(min_length=1)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    n: int | None = Field(default=None, ge=1, le=128)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63)
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    # Not in OpenAI's reference but common across compatible servers (vLLM, TGI).
    top_k: int | None = Field(default=None, ge=0)
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list):
            if len(value) > 4:
                raise ValueError("at most 4 stop sequences are allowed")
            if any(not s for s in value):
                raise ValueError("stop sequences must not be empty")
        elif value == "":
            raise ValueError("stop sequences must not be empty")
        return value

    @model_validator(mode="after")
    def _unsupported(self) -> _SamplingFields:
        # Refused rather than ignored: a client asking for them would get silently wrong output.
        if self.n not in (None, 1):
            raise UnsupportedField("n", "only n=1 is supported")
        if self.frequency_penalty not in (None, 0.0):
            raise UnsupportedField("frequency_penalty", "frequency_penalty is not supported")
        if self.presence_penalty not in (None, 0.0):
            raise UnsupportedField("presence_penalty", "presence_penalty is not supported")
        if self.logit_bias:
            raise UnsupportedField("logit_bias", "logit_bias is not supported")
        return self

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool | None = None
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[dict[str, Any]] | None = None

    @model_validator(mode="after")
    def _chat_unsupported(self) -> ChatCompletionRequest:
        if self.logprobs:
            raise UnsupportedField("logprobs", "logprobs are not supported")
        if self.tools:
            raise UnsupportedField("tools", "tools are not supported by this model")
        return self

    def token_limit(self) -> int | None:
        # max_completion_tokens supersedes the deprecated max_tokens in OpenAI's API.
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_SamplingFields):
    prompt: str | list[str]
    echo: bool | None = False
    logprobs: int | None = None
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
        if self.logprobs is not None:
            raise UnsupportedField("logprobs", "logprobs are not supported")
        if self.suffix:
            raise UnsupportedField("suffix", "suffix is not supported")
        if self.best_of not in (None, 1):
            raise UnsupportedField("best_of", "only best_of=1 is supported")
        return self

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def token_limit(self) -> int | None:
        # The legacy endpoint defaults to 16 tokens, as OpenAI's does.
        return self.max_tokens if self.max_tokens is not None else 16
