"""What every upstream backend shares: one streamed request with retries before output, the
table from provider failures to Sluice errors, and the final message of a stream.

A backend says how to build its request and how to read its stream; `UpstreamBackend.generate`
does the rest. Retries happen only before the first text has been yielded: after that, a
failure ends the stream with a `StreamError` and the usage delivered so far, because the
client has already seen output that a retry would repeat.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import random
import re
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from services.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    SluiceError,
    Unavailable,
)
from services.common.grpc_server import HTTP_STATUS_KEY
from services.engine.upstream.catalog import Limits, UpstreamModel
from services.engine.upstream.credentials import ProviderKey
from services.pb.engine.v1 import engine_pb2

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 8.0
# A provider asking us to wait longer than this is not retried in-line: the client gets the 429
# with the provider's retry-after instead of a request that hangs.
MAX_RETRY_AFTER_S = 30.0
MAX_MESSAGE_CHARS = 1000
DISPLAY_NAMES = {"openai": "OpenAI", "anthropic": "Anthropic"}
# Provider key shapes, scrubbed from any upstream message we pass on (OpenAI's 401 echoes a
# masked key, for one).
_KEY_PATTERN = re.compile(r"\b(sk-[A-Za-z0-9_*.\-]{4,})")


@dataclass
class StreamState:
    """What a backend's parser has learned from the stream so far."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str = ""


@dataclass
class UpstreamRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    def __repr__(self) -> str:
        # Headers hold the provider key: never part of a repr.
        return f"UpstreamRequest(path={self.path!r})"


class UpstreamFailure(Exception):
    """One failed upstream attempt, before it is mapped to a `SluiceError`; never holds a key.

    `kind` is "http" (the provider answered `status`), "timeout", "connection" or "stream" (the
    stream broke or carried an error event).
    """

    def __init__(
        self,
        kind: str,
        detail: str,
        *,
        status: int = 0,
        code: str = "",
        param: str | None = None,
        retry_after: float | None = None,
        should_retry: bool | None = None,
    ) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.status = status
        self.code = code
        self.param = param
        self.retry_after = retry_after
        self.should_retry = should_retry

    @property
    def retryable(self) -> bool:
        if self.retry_after is not None and self.retry_after > MAX_RETRY_AFTER_S:
            return False
        if self.should_retry is not None:
            return self.should_retry
        if self.code == "insufficient_quota":
            # The account is out of credit: waiting does not help.
            return False
        if self.kind != "http":
            return True
        return self.status in (408, 429) or self.status >= 500

    def summary(self) -> str:
        return f"HTTP {self.status}" if self.kind == "http" else self.kind

    def to_error(self, provider: str, model: UpstreamModel) -> SluiceError:
        """The error the caller sees when no output had been produced (see the module doc)."""
        name = DISPLAY_NAMES.get(provider, provider)
        status = self.status
        detail = f": {self.detail}" if self.detail else "."
        if self.kind == "timeout" or status in (408, 504):
            return _with_status(
                Unavailable(f"{name} did not answer in time.", code="upstream_timeout"), 504
            )
        if self.kind in ("connection", "stream") or status >= 500:
            return _with_status(
                Unavailable(f"{name} failed to serve the request{detail}", code="upstream_error"),
                502,
            )
        if status in (401, 403):
            return _with_status(
                FailedPrecondition(
                    f"The organization's {provider} credential was rejected by {name} "
                    f"(HTTP {status}). An administrator must update it "
                    f"(`sluice providers add`); your Sluice API key is fine.",
                    code="upstream_authentication_failed",
                ),
                502,
            )
        if status == 404:
            return _with_status(
                NotFound(
                    f"{name} does not serve the model '{model.model}'{detail}",
                    code="model_not_found",
                    param="model",
                ),
                404,
            )
        if status == 429:
            err = ResourceExhausted(
                f"The organization's {name} account is rate limited by {name}{detail}",
                code="upstream_rate_limited",
            )
            if self.retry_after is not None:
                # Read by the gRPC error boundary into the retry-after the client sees.
                err.retry_after = max(1, math.ceil(self.retry_after))  # type: ignore[attr-defined]
            return _with_status(err, 429)
        http = 413 if status == 413 else 400
        return _with_status(
            InvalidArgument(
                self.detail or f"{name} refused the request (HTTP {status}).",
                code=self.code,
                param=self.param,
            ),
            http,
        )


def _with_status(err: SluiceError, http_status: int) -> SluiceError:
    err.metadata[HTTP_STATUS_KEY] = str(http_status)
    return err


def scrub(text: str, key: ProviderKey | None = None) -> str:
    """An upstream message fit to pass on: no key (not even a masked one), bounded length."""
    if key is not None and key.reveal():
        text = text.replace(key.reveal(), "***")
    return _KEY_PATTERN.sub("sk-***", text)[:MAX_MESSAGE_CHARS]


def retry_after_s(headers: httpx.Headers, now: float | None = None) -> float | None:
    """The provider's requested wait: retry-after-ms, else retry-after in seconds or HTTP date."""
    if ms := headers.get("retry-after-ms"):
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_s(attempt: int, retry_after: float | None, rng: Callable[[], float]) -> float:
    """Exponential backoff with jitter, or exactly what the provider asked for."""
    if retry_after is not None:
        return retry_after
    delay = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt)
    # Jitter keeps many engines that failed together from retrying in lockstep.
    return delay * (1.0 - 0.25 * rng())


def error_fields(body: Any) -> tuple[str, str, str | None]:
    """(message, code, param) from OpenAI's or Anthropic's error JSON."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return "", "", None
    message = err.get("message") if isinstance(err.get("message"), str) else ""
    code = err.get("code") if isinstance(err.get("code"), str) else ""
    param = err.get("param") if isinstance(err.get("param"), str) else None
    return message or "", code or "", param


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[str, str]]:
    """(event name, data) for each server-sent event; comment lines and ids are skipped."""
    event = ""
    data: list[str] = []
    async for line in response.aiter_lines():
        if not line:
            if data:
                yield event, "\n".join(data)
            event = ""
            data = []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
    if data:
        yield event, "\n".join(data)


def load_event(data: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except ValueError:
        raise UpstreamFailure("stream", "malformed event in the stream") from None
    if not isinstance(obj, dict):
        raise UpstreamFailure("stream", "malformed event in the stream")
    return obj


def chat_messages(req: engine_pb2.GenerateRequest) -> list[tuple[str, str]]:
    """The request's chat messages; upstream models take no raw prompt."""
    which = req.WhichOneof("input")
    if which == "prompt":
        raise InvalidArgument(
            "Upstream models take chat messages: use /v1/chat/completions for upstream models.",
            param="prompt",
        )
    if which != "messages" or not req.messages.messages:
        raise InvalidArgument("messages must not be empty", param="messages")
    return [(m.role, m.content) for m in req.messages.messages]


def wire_float(value: float) -> float:
    """A proto float32 as the client wrote it: 0.3, not 0.30000001192092896."""
    return float(f"{value:.7g}")


def completion_cap(
    req: engine_pb2.GenerateRequest, limits: Limits, default: int | None
) -> int | None:
    """max_tokens to send, bounded by the plan's `max_context` when it is set.

    The bound is an approximation: prompt tokens are counted by the provider, so a plan's cap on
    prompt + completion is enforced on the completion alone.
    """
    wanted: int | None = default
    if req.HasField("max_tokens"):
        if req.max_tokens < 1:
            raise InvalidArgument("max_tokens must be at least 1", param="max_tokens")
        wanted = req.max_tokens
    if req.max_context > 0:
        if wanted is None:
            # Our own value must stay within what the model can produce, or the provider
            # refuses a request the client never made.
            wanted = min(req.max_context, limits.max_output_tokens or req.max_context)
        else:
            wanted = min(wanted, req.max_context)
    return wanted


class UpstreamBackend(ABC):
    """One provider's API behind the engine's `Generate` stream (one shared HTTP client)."""

    provider: str

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        max_retries: int = 3,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.client = client
        self.max_retries = max_retries
        self.sleep = sleep
        self.rng = rng

    @abstractmethod
    def build(
        self,
        req: engine_pb2.GenerateRequest,
        model: UpstreamModel,
        limits: Limits,
        key: ProviderKey,
    ) -> UpstreamRequest:
        """The provider request for `req`; raises `InvalidArgument` for what it cannot express."""

    @abstractmethod
    def parse(self, response: httpx.Response, state: StreamState) -> AsyncIterator[str]:
        """Text deltas of a successful streamed response, updating `state` as events arrive.

        Raises `UpstreamFailure("stream", ...)` for an error event in the stream.
        """

    async def generate(
        self,
        req: engine_pb2.GenerateRequest,
        model: UpstreamModel,
        limits: Limits,
        info: engine_pb2.ModelInfo,
        key: ProviderKey,
    ) -> AsyncIterator[engine_pb2.GenerateResponse]:
        request = self.build(req, model, limits, key)
        delivered = 0
        attempt = 0
        while True:
            state = StreamState()
            try:
                # Leaving this block in any way, a cancelled call included, closes the
                # provider's HTTP stream.
                async with self.client.stream(
                    "POST", request.path, json=request.body, headers=request.headers
                ) as response:
                    if not response.is_success:
                        raise await self._status_failure(response, key)
                    async for text in self._texts(response, state):
                        msg = engine_pb2.GenerateResponse(text=text, token_count=1)
                        if delivered == 0:
                            msg.model.CopyFrom(info)
                        delivered += 1
                        yield msg
                    if not state.finish_reason:
                        raise UpstreamFailure("stream", "the stream ended before it finished")
                break
            except UpstreamFailure as exc:
                failure = exc
            except httpx.TimeoutException:
                failure = UpstreamFailure("timeout", "")
            except httpx.RequestError as exc:
                failure = UpstreamFailure("connection", _transport_detail(exc))
            failure.detail = scrub(failure.detail, key)
            if delivered:
                log.warning(
                    "%s stream for request %s failed after %d deltas: %s",
                    self.provider,
                    req.request_id,
                    delivered,
                    failure.summary(),
                )
                yield self._broken(state, delivered, failure)
                return
            if not failure.retryable or attempt >= self.max_retries:
                log.warning(
                    "%s request %s failed: %s (%d attempts)",
                    self.provider,
                    req.request_id,
                    failure.summary(),
                    attempt + 1,
                )
                raise failure.to_error(self.provider, model)
            delay = backoff_s(attempt, failure.retry_after, self.rng)
            log.info(
                "%s request %s: %s, retry %d/%d in %.2fs",
                self.provider,
                req.request_id,
                failure.summary(),
                attempt + 1,
                self.max_retries,
                delay,
            )
            await self.sleep(delay)
            attempt += 1

        final = engine_pb2.GenerateResponse(finish_reason=state.finish_reason)
        if delivered == 0:
            final.model.CopyFrom(info)
        final.usage.prompt_tokens = state.prompt_tokens or 0
        final.usage.completion_tokens = (
            delivered if state.completion_tokens is None else state.completion_tokens
        )
        yield final

    async def _texts(self, response: httpx.Response, state: StreamState) -> AsyncIterator[str]:
        try:
            async for text in self.parse(response, state):
                if text:
                    yield text
        except (KeyError, TypeError, ValueError, AttributeError):
            # A provider event of an unexpected shape: the stream cannot be trusted further.
            raise UpstreamFailure("stream", "unexpected event in the stream") from None

    async def _status_failure(self, response: httpx.Response, key: ProviderKey) -> UpstreamFailure:
        try:
            await response.aread()
            body = response.json()
        except (ValueError, httpx.HTTPError):
            body = None
        message, code, param = error_fields(body)
        should = response.headers.get("x-should-retry")
        return UpstreamFailure(
            "http",
            scrub(message, key),
            status=response.status_code,
            code=scrub(code, key),
            param=param,
            retry_after=retry_after_s(response.headers),
            should_retry=None if should not in ("true", "false") else should == "true",
        )

    def _broken(
        self, state: StreamState, delivered: int, failure: UpstreamFailure
    ) -> engine_pb2.GenerateResponse:
        name = DISPLAY_NAMES.get(self.provider, self.provider)
        detail = failure.detail or failure.summary()
        msg = engine_pb2.GenerateResponse()
        msg.usage.prompt_tokens = state.prompt_tokens or 0
        msg.usage.completion_tokens = max(delivered, state.completion_tokens or 0)
        msg.error.http_status = 502
        msg.error.type = "upstream_error"
        msg.error.code = "upstream_stream_failed"
        msg.error.message = f"The {name} stream failed after output had begun: {detail}"
        return msg


def _transport_detail(exc: httpx.RequestError) -> str:
    # The class name says enough (ConnectError, RemoteProtocolError); the exception text may
    # carry a host name but never headers.
    return f"connection error ({exc.__class__.__name__})"
