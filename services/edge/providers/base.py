"""Calling a provider's HTTP API: one request with retries before any output reached the client,
and the table from provider failures to the errors the client sees.

Retries (connection errors, timeouts, 408, 429 and 5xx, with backoff that honours the provider's
retry-after) happen only while nothing has been sent to the client: for a streamed request, until
the provider's first event has been read. After that a failure ends the client's stream with an
error event and bills what was delivered (see `services.edge.relay`), because a retry would
repeat output the client already has.
"""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import json
import logging
import math
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import httpx
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from services.common.tracing import NO_SPAN, SpanBlock, Tracing
from services.edge.drain import shutdown_error
from services.edge.errors import APIError
from services.edge.providers.credentials import ProviderKey

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


class SSEEvent(NamedTuple):
    """One server-sent event: its `event:` name ("" when absent) and its data lines joined."""

    event: str
    data: str


class UpstreamFailure(Exception):
    """One failed upstream attempt, before it is mapped to an `APIError`; never holds a key.

    `kind` is "http" (the provider answered `status`), "timeout", "connection", "stream" (the
    stream broke or carried an error event) or "shutdown" (the edge's drain ended the stream).
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

    def to_error(self, provider: str, model: str) -> APIError:
        """The error the client sees when no output had been produced (see the module doc)."""
        name = DISPLAY_NAMES.get(provider, provider)
        status = self.status
        detail = f": {self.detail}" if self.detail else "."
        if self.kind == "timeout" or status in (408, 504):
            return APIError(
                504,
                f"{name} did not answer in time.",
                type="upstream_error",
                code="upstream_timeout",
            )
        if self.kind in ("connection", "stream") or status >= 500:
            return APIError(
                502,
                f"{name} failed to serve the request{detail}",
                type="upstream_error",
                code="upstream_error",
            )
        if status in (401, 403):
            # Never a 401: that would tell the client its own Sluice key is wrong.
            return APIError(
                502,
                f"The organization's {provider} credential was rejected by {name} "
                f"(HTTP {status}). An administrator must update it "
                f"(`sluice providers add`); your Sluice API key is fine.",
                type="upstream_error",
                code="upstream_authentication_failed",
            )
        if status == 404:
            return APIError(
                404,
                f"{name} does not serve the model '{model}'{detail}",
                code="model_not_found",
                param="model",
            )
        if status == 429:
            headers = {}
            if self.retry_after is not None:
                headers["retry-after"] = str(max(1, math.ceil(self.retry_after)))
            return APIError(
                429,
                f"The organization's {name} account is rate limited by {name}{detail}",
                type="rate_limit_exceeded",
                code="upstream_rate_limited",
                headers=headers,
            )
        return APIError(
            413 if status == 413 else 400,
            self.detail or f"{name} refused the request (HTTP {status}).",
            code=self.code or None,
            param=self.param,
        )


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
    # Jitter keeps many edges that failed together from retrying in lockstep.
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


async def sse_events(response: httpx.Response) -> AsyncIterator[SSEEvent]:
    """Each server-sent event of a response; comment lines and ids are skipped."""
    event = ""
    data: list[str] = []
    async for line in response.aiter_lines():
        if not line:
            if data:
                yield SSEEvent(event, "\n".join(data))
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
        yield SSEEvent(event, "\n".join(data))


def load_event(data: str) -> dict[str, Any]:
    """An event's JSON object; anything else means the stream cannot be trusted further."""
    try:
        obj = json.loads(data)
    except ValueError:
        raise UpstreamFailure("stream", "malformed event in the stream") from None
    if not isinstance(obj, dict):
        raise UpstreamFailure("stream", "malformed event in the stream")
    return obj


def as_dict(value: Any) -> dict[str, Any]:
    """`value` if it is a JSON object, else an empty one (for optional fields of answers)."""
    return value if isinstance(value, dict) else {}


def dump(obj: Any) -> bytes:
    """Compact JSON as providers and SDKs write it (UTF-8, no ASCII escaping)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


# What a provider module says about one event: a failure it carries (an error event), or None.
EventCheck = Callable[[SSEEvent], UpstreamFailure | None]


@dataclass
class UpstreamStream:
    """A provider's streamed answer whose first event has already been read (so that a failure
    before it could still be retried). Iterating yields that event, then the rest; a broken
    stream raises `UpstreamFailure`. Closing it closes the provider's HTTP stream."""

    response: httpx.Response
    first: SSEEvent
    rest: AsyncIterator[SSEEvent]
    check: EventCheck
    key: ProviderKey

    async def __aiter__(self) -> AsyncIterator[SSEEvent]:
        yield self.first
        try:
            async for event in self.rest:
                if failure := self.check(event):
                    raise failure
                yield event
        except httpx.TimeoutException:
            raise UpstreamFailure("timeout", "") from None
        except httpx.RequestError as exc:
            raise UpstreamFailure("connection", _transport_detail(exc)) from None
        except UpstreamFailure as exc:
            exc.detail = scrub(exc.detail, self.key)
            raise

    async def aclose(self) -> None:
        await self.response.aclose()


HTTPClients = httpx.AsyncClient | Sequence[httpx.AsyncClient]


class ProviderClient:
    """One provider's HTTP API over one or more HTTP clients alike (`http`), taken in turn.

    Several small connection pools instead of one large one: httpcore walks its whole pool for
    every request it assigns, which under a few dozen concurrent calls cost the edge more CPU
    than the rest of the provider call (docs/PERFORMANCE.md, the gateway profile)."""

    def __init__(
        self,
        provider: str,
        http: HTTPClients,
        auth_headers: Callable[[ProviderKey], dict[str, str]],
        event_error: EventCheck,
        *,
        max_retries: int = 3,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
        tracing: Tracing | None = None,
    ) -> None:
        self.provider = provider
        self.pools = [http] if isinstance(http, httpx.AsyncClient) else list(http)
        # Requests are built by the first; the clients share base URL, headers and timeouts.
        self.http = self.pools[0]
        self._turns = itertools.cycle(self.pools)
        self.auth_headers = auth_headers
        self.event_error = event_error
        self.max_retries = max_retries
        self.sleep = sleep
        self.rng = rng
        # Each attempt is a client span (services.common.tracing); the trace context is not
        # sent to the provider.
        self.tracing = tracing or Tracing()

    async def aclose(self) -> None:
        for pool in self.pools:
            await pool.aclose()

    def _request(
        self,
        path: str,
        body: bytes | None,
        key: ProviderKey,
        headers: dict[str, str] | None,
        method: str = "POST",
        params: dict[str, str] | None = None,
    ) -> httpx.Request:
        content = {"content-type": "application/json"} if body is not None else {}
        merged = {**content, **(headers or {}), **self.auth_headers(key)}
        return self.http.build_request(method, path, content=body, headers=merged, params=params)

    async def post_json(
        self,
        path: str,
        body: bytes,
        key: ProviderKey,
        *,
        model: str,
        request_id: str,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """A non-streamed call: the provider's JSON answer, after retries; or the client's error."""
        return await self.call_json(
            "POST", path, body, key, model=model, request_id=request_id, headers=headers
        )

    async def call_json(
        self,
        method: str,
        path: str,
        body: bytes | None,
        key: ProviderKey,
        *,
        model: str,
        request_id: str,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """One call of any method answering JSON (e.g. GET or DELETE of a stored object), with
        the retries and the failure table of `post_json`."""

        async def attempt() -> dict[str, Any]:
            request = self._request(path, body, key, headers, method, params)
            response = await next(self._turns).send(request)
            _note_status(response)
            if not response.is_success:
                raise await self._status_failure(response, key)
            try:
                answer = response.json()
            except ValueError:
                raise UpstreamFailure("stream", "the answer is not JSON") from None
            if not isinstance(answer, dict):
                raise UpstreamFailure("stream", "the answer is not a JSON object")
            return answer

        return await self._with_retries(attempt, key, model, request_id, method, path)

    async def post_stream(
        self,
        path: str,
        body: bytes,
        key: ProviderKey,
        *,
        model: str,
        request_id: str,
        headers: dict[str, str] | None = None,
    ) -> UpstreamStream:
        """A streamed call, open and with its first event read; the caller must `aclose()` it."""

        async def attempt() -> UpstreamStream:
            request = self._request(path, body, key, headers)
            response = await next(self._turns).send(request, stream=True)
            _note_status(response)
            try:
                if not response.is_success:
                    raise await self._status_failure(response, key)
                events = sse_events(response)
                first = await anext(events, None)
                if first is None:
                    raise UpstreamFailure("stream", "the stream ended before any event")
                if failure := self.event_error(first):
                    raise failure
            except BaseException:
                await response.aclose()
                raise
            return UpstreamStream(response, first, events, self.event_error, key)

        return await self._with_retries(attempt, key, model, request_id, "POST", path)

    async def _with_retries(
        self,
        attempt: Callable[[], Awaitable[Any]],
        key: ProviderKey,
        model: str,
        request_id: str,
        method: str,
        path: str,
    ) -> Any:
        tries = 0
        while True:
            with self._attempt_span(method, path, tries) as span:
                try:
                    return await attempt()
                except UpstreamFailure as exc:
                    failure = exc
                except httpx.TimeoutException:
                    failure = UpstreamFailure("timeout", "")
                except httpx.RequestError as exc:
                    failure = UpstreamFailure("connection", _transport_detail(exc))
                _note_failure(span, failure)
            failure.detail = scrub(failure.detail, key)
            failure.code = scrub(failure.code, key)
            if not failure.retryable or tries >= self.max_retries:
                log.warning(
                    "%s request %s failed: %s (%d attempts)",
                    self.provider,
                    request_id,
                    failure.summary(),
                    tries + 1,
                )
                raise failure.to_error(self.provider, model)
            delay = backoff_s(tries, failure.retry_after, self.rng)
            log.info(
                "%s request %s: %s, retry %d/%d in %.2fs",
                self.provider,
                request_id,
                failure.summary(),
                tries + 1,
                self.max_retries,
                delay,
            )
            await self.sleep(delay)
            tries += 1

    def _attempt_span(self, method: str, path: str, tries: int) -> SpanBlock:
        """One attempt's client span, as OpenTelemetry's HTTP conventions describe it (the URL
        without any query; the provider key is in a header, and headers are not recorded)."""
        if not self.tracing.enabled:
            return NO_SPAN
        url = self.http.base_url.copy_with(query=None)
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "url.full": str(url).rstrip("/") + "/" + path.lstrip("/"),
            "server.address": url.host,
        }
        if url.port is not None:
            attributes["server.port"] = url.port
        if tries:
            attributes["http.request.resend_count"] = tries
        return self.tracing.span(method, kind=SpanKind.CLIENT, attributes=attributes)

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


def shutdown_failure() -> UpstreamFailure:
    """What a provider stream still running at the edge's drain deadline raises."""
    return UpstreamFailure("shutdown", "the server is shutting down", should_retry=False)


def _note_status(response: httpx.Response) -> None:
    """The provider's status on the attempt's span (a no-op when tracing is off)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute("http.response.status_code", response.status_code)


def _note_failure(span: Span, failure: UpstreamFailure) -> None:
    """A failed attempt: its HTTP status or its kind (timeout, connection, stream)."""
    if span.is_recording():
        kind = str(failure.status) if failure.kind == "http" else failure.kind
        span.set_attribute("error.type", kind)
        span.set_status(Status(StatusCode.ERROR, kind))


def stream_failure_error(provider: str, failure: UpstreamFailure) -> APIError:
    """The error event that ends a client's stream when the provider's broke after output."""
    if failure.kind == "shutdown":
        return shutdown_error()
    name = DISPLAY_NAMES.get(provider, provider)
    detail = failure.detail or failure.summary()
    return APIError(
        502,
        f"The {name} stream failed after output had begun: {detail}",
        type="upstream_error",
        code="upstream_stream_failed",
    )


def _transport_detail(exc: httpx.RequestError) -> str:
    # The class name says enough (ConnectError, RemoteProtocolError); the exception text may
    # carry a host name but never headers.
    return f"connection error ({exc.__class__.__name__})"
