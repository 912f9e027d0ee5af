"""Calling a provider against the loopback OpenAI stand-in: retries before any output only,
retry-after and backoff, the error table, where the provider key goes, and closing streams."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import socket
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from services.common.settings import Settings
from services.common.tracing import Tracing
from services.edge.errors import APIError
from services.edge.providers import openai
from services.edge.providers.base import (
    BACKOFF_CAP_S,
    MAX_RETRY_AFTER_S,
    HTTPClients,
    ProviderClient,
    UpstreamFailure,
    UpstreamStream,
    backoff_s,
    dump,
    retry_after_s,
)
from services.edge.providers.credentials import ProviderKey
from tests.fakes.harness import RunningFake
from tests.fakes.openai_upstream import openai_fake

KEY = "sk-proj-test0123456789abcdefXYZ"
MODEL = "openai/gpt-4o-mini"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello."}]}


@pytest.fixture(scope="module")
def fake() -> Iterator[RunningFake]:
    with openai_fake() as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh(fake: RunningFake) -> None:
    fake.reset()


class Sleeps(list[float]):
    """Records the backoff delays instead of waiting them out."""

    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def make_client(http: HTTPClients, sleeps: Sleeps, retries: int = 3) -> ProviderClient:
    return ProviderClient(
        "openai",
        http,
        openai.auth_headers,
        openai.event_error,
        max_retries=retries,
        sleep=sleeps,
        rng=lambda: 0.0,
    )


@pytest.fixture
async def provider(fake: RunningFake, sleeps: Sleeps) -> AsyncIterator[ProviderClient]:
    async with httpx.AsyncClient(base_url=fake.url + "/v1", timeout=5.0) as http:
        yield make_client(http, sleeps)


async def call(provider: ProviderClient, **body: object) -> dict[str, object]:
    return await provider.post_json(
        "/chat/completions", dump({**BODY, **body}), ProviderKey(KEY), model=MODEL, request_id="r"
    )


async def stream(provider: ProviderClient) -> UpstreamStream:
    return await provider.post_stream(
        "/chat/completions",
        dump({**BODY, "stream": True}),
        ProviderKey(KEY),
        model=MODEL,
        request_id="r",
    )


async def failure(provider: ProviderClient) -> APIError:
    with pytest.raises(APIError) as info:
        await call(provider)
    return info.value


async def events(s: UpstreamStream) -> list[str]:
    try:
        return [e.data async for e in s]
    finally:
        await s.aclose()


async def test_a_success_is_the_providers_json(provider: ProviderClient, fake: RunningFake) -> None:
    fake.script(reply="Hi!", prompt_tokens=9, completion_tokens=2)
    answer = await call(provider)
    assert answer["object"] == "chat.completion"
    assert answer["usage"]["prompt_tokens"] == 9  # type: ignore[index]
    [sent] = fake.requests()
    assert sent["body"] == BODY


async def test_requests_take_the_clients_in_turn_and_close_them_all(
    fake: RunningFake, sleeps: Sleeps
) -> None:
    sent: list[int] = []

    def counting(i: int) -> httpx.AsyncClient:
        async def hook(request: httpx.Request) -> None:
            sent.append(i)

        return httpx.AsyncClient(
            base_url=fake.url + "/v1", timeout=5.0, event_hooks={"request": [hook]}
        )

    pools = [counting(0), counting(1), counting(2)]
    provider = make_client(pools, sleeps)
    for _ in range(4):
        assert (await call(provider))["object"] == "chat.completion"
    await events(await stream(provider))
    assert sent == [0, 1, 2, 0, 1]
    await provider.aclose()
    assert all(pool.is_closed for pool in pools)


async def test_retries_before_output_honour_retry_after(
    provider: ProviderClient, fake: RunningFake, sleeps: Sleeps
) -> None:
    fake.script(fail_next=2, fail_status=429, retry_after="2")
    await call(provider)
    assert [r["outcome"] for r in fake.requests()] == ["failed", "failed", "completed"]
    assert sleeps == [2.0, 2.0]


async def test_retry_after_ms_wins_over_retry_after(
    provider: ProviderClient, fake: RunningFake, sleeps: Sleeps
) -> None:
    fake.script(fail_next=1, fail_status=503, retry_after="3", retry_after_ms="250")
    await call(provider)
    assert sleeps == [0.25]


async def test_server_errors_back_off_exponentially_then_give_up(
    provider: ProviderClient, fake: RunningFake, sleeps: Sleeps
) -> None:
    fake.script(fail_next=10, fail_status=500)
    err = await failure(provider)
    assert (err.status, err.type, err.code) == (502, "upstream_error", "upstream_error")
    assert len(fake.requests()) == 4  # the first try and three retries
    assert sleeps == [0.5, 1.0, 2.0]


async def test_a_stream_is_open_with_its_first_event_read(
    provider: ProviderClient, fake: RunningFake
) -> None:
    fake.script(chunks=["a", "b"])
    s = await stream(provider)
    assert json.loads(s.first.data)["choices"][0]["delta"]["role"] == "assistant"
    data = await events(s)
    assert data[-1] == "[DONE]"
    assert [
        json.loads(d)["choices"][0]["delta"].get("content")
        for d in data[1:-1]
        if json.loads(d)["choices"] and json.loads(d)["choices"][0]["delta"].get("content")
    ] == ["a", "b"]


async def test_a_stream_broken_before_its_first_event_is_retried(
    fake: RunningFake, sleeps: Sleeps
) -> None:
    fake.script(fail_next=2, fail_status=529)
    async with httpx.AsyncClient(base_url=fake.url + "/v1", timeout=5.0) as http:
        s = await stream(make_client(http, sleeps))
        await events(s)
    assert [r["outcome"] for r in fake.requests()] == ["failed", "failed", "completed"]


async def test_a_failure_after_the_first_event_is_not_retried(
    provider: ProviderClient, fake: RunningFake, sleeps: Sleeps
) -> None:
    fake.script(chunks=["a", "b", "c", "d"], drop_after_chunks=2)
    s = await stream(provider)
    with pytest.raises(UpstreamFailure) as info:
        await events(s)
    assert info.value.kind == "connection"
    assert [r["outcome"] for r in fake.requests()] == ["dropped"]
    assert sleeps == []


async def test_an_error_event_mid_stream_is_a_stream_failure(
    provider: ProviderClient, fake: RunningFake
) -> None:
    fake.script(chunks=["a", "b", "c"], error_event_after_chunks=1, error_message="boom")
    s = await stream(provider)
    with pytest.raises(UpstreamFailure) as info:
        await events(s)
    assert (info.value.kind, info.value.detail) == ("stream", "boom")
    assert len(fake.requests()) == 1


@pytest.mark.parametrize(
    ("status", "http", "code", "retried"),
    [
        (400, 400, "context_length_exceeded", False),
        (422, 400, None, False),
        (401, 502, "upstream_authentication_failed", False),
        (403, 502, "upstream_authentication_failed", False),
        (404, 404, "model_not_found", False),
        (413, 413, None, False),
        (429, 429, "upstream_rate_limited", True),
        (500, 502, "upstream_error", True),
        (503, 502, "upstream_error", True),
    ],
)
async def test_error_table(
    provider: ProviderClient,
    fake: RunningFake,
    status: int,
    http: int,
    code: str | None,
    retried: bool,
) -> None:
    fake.script(
        fail_next=10,
        fail_status=status,
        error_code="context_length_exceeded" if status == 400 else None,
        error_message="Upstream says no." if status in (400, 422, 413) else "",
        retry_after="0",
    )
    err = await failure(provider)
    assert (err.status, err.code) == (http, code)
    if status in (400, 422, 413):
        assert err.message == "Upstream says no."
    if status in (401, 403):
        assert "organization's openai credential" in err.message
        assert err.type == "upstream_error"
    assert len(fake.requests()) == (4 if retried else 1)


async def test_rate_limit_keeps_the_providers_retry_after(
    provider: ProviderClient, fake: RunningFake, sleeps: Sleeps
) -> None:
    # Longer than we wait in-line: not retried, and the client is told when to come back.
    wait = int(MAX_RETRY_AFTER_S) + 30
    fake.script(fail_next=1, fail_status=429, retry_after=str(wait))
    err = await failure(provider)
    assert err.status == 429 and err.headers["retry-after"] == str(wait)
    assert sleeps == []
    assert len(fake.requests()) == 1


async def test_timeouts_before_output_are_retried_then_reported(
    fake: RunningFake, sleeps: Sleeps
) -> None:
    fake.script(response_delay_s=1.0)
    timeout = httpx.Timeout(0.1, connect=1.0)
    async with httpx.AsyncClient(base_url=fake.url + "/v1", timeout=timeout) as http:
        err = await failure(make_client(http, sleeps, retries=1))
    assert (err.status, err.code) == (504, "upstream_timeout")
    assert len(sleeps) == 1


async def test_connection_refused_is_retried_then_reported(sleeps: Sleeps) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}/v1") as http:
        err = await failure(make_client(http, sleeps, retries=2))
    assert (err.status, err.code) == (502, "upstream_error")
    assert sleeps == [0.5, 1.0]


async def test_key_is_only_in_the_upstream_authorization_header(
    provider: ProviderClient, fake: RunningFake, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    answer = await call(provider)
    [sent] = fake.requests()
    assert sent["headers"]["authorization"] == f"Bearer {KEY}"
    assert KEY not in json.dumps(sent["body"]) and KEY not in json.dumps(answer)
    # httpx and httpcore log at DEBUG here; neither prints request headers.
    assert any(r.name.startswith(("httpx", "httpcore")) for r in caplog.records)
    assert KEY not in caplog.text
    assert KEY not in repr(ProviderKey(KEY))


async def test_provider_messages_never_echo_a_key(
    provider: ProviderClient, fake: RunningFake, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # A 401 from OpenAI quotes a masked key; our message is our own.
    fake.script(expected_key="sk-proj-the-right-one")
    err = await failure(provider)
    assert err.code == "upstream_authentication_failed" and "sk-" not in err.message
    # Any other message is scrubbed of the key, whole or masked.
    fake.script(fail_next=1, fail_status=400, error_message=f"bad key {KEY} or sk-pr****XYZ")
    err = await failure(provider)
    assert KEY not in err.message
    assert "sk-pr" not in err.message
    assert KEY not in caplog.text


async def test_closing_the_stream_closes_the_upstream_request(
    provider: ProviderClient, fake: RunningFake
) -> None:
    fake.script(chunks=[f"t{i} " for i in range(100)], chunk_delay_s=0.05)
    s = await stream(provider)
    it = aiter(s)
    await anext(it)
    await anext(it)
    await s.aclose()
    for _ in range(200):
        if fake.requests()[0]["outcome"] == "aborted":
            break
        await asyncio.sleep(0.025)
    assert fake.requests()[0]["outcome"] == "aborted"


def test_retry_after_forms_and_backoff_cap() -> None:
    now = 1_000_000.0
    date = email.utils.formatdate(now + 7, usegmt=True)
    assert retry_after_s(httpx.Headers({"retry-after": date}), now=now) == pytest.approx(7)
    assert retry_after_s(httpx.Headers({"retry-after": "3"})) == 3.0
    assert retry_after_s(httpx.Headers({"retry-after-ms": "20", "retry-after": "9"})) == 0.02
    assert retry_after_s(httpx.Headers({"retry-after": "soon"})) is None
    assert retry_after_s(httpx.Headers()) is None
    assert backoff_s(20, None, lambda: 0.0) == BACKOFF_CAP_S
    assert backoff_s(0, None, lambda: 1.0) == 0.375
    assert backoff_s(3, 1.5, lambda: 0.0) == 1.5


async def test_exhausted_quota_is_not_retried(
    provider: ProviderClient, fake: RunningFake, sleeps: Sleeps
) -> None:
    fake.script(fail_next=5, fail_status=429, error_code="insufficient_quota",
                error_message="You exceeded your current quota.")  # fmt: skip
    err = await failure(provider)
    assert err.code == "upstream_rate_limited"
    assert "exceeded your current quota" in err.message
    assert len(fake.requests()) == 1
    assert sleeps == []


def test_the_client_follows_the_settings() -> None:
    http = httpx.AsyncClient(base_url="http://127.0.0.1:1")
    client = openai.client(Settings(upstream_max_retries=5), http)
    assert (client.provider, client.max_retries) == ("openai", 5)


async def test_each_attempt_is_a_client_span_without_the_key(
    fake: RunningFake, sleeps: Sleeps
) -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing.with_processors("edge", [SimpleSpanProcessor(exporter)])
    fake.script(fail_next=1, fail_status=503, chunks=["a", "b"])
    async with httpx.AsyncClient(base_url=fake.url + "/v1", timeout=5.0) as http:
        client = make_client(http, sleeps)
        client.tracing = tracing
        with tracing.span("chat openai/gpt-4o-mini") as generation:
            assert (await events(await stream(client)))[-1] == "[DONE]"
    failed, ok, parent = exporter.get_finished_spans()
    assert parent.name == "chat openai/gpt-4o-mini"
    url = fake.url + "/v1/chat/completions"
    port = httpx.URL(fake.url).port
    for span in (failed, ok):
        assert span.name == "POST"
        assert span.kind is SpanKind.CLIENT
        assert span.parent is not None
        assert span.parent.span_id == generation.get_span_context().span_id
        assert KEY not in span.to_json()
    assert failed.attributes == {
        "http.request.method": "POST",
        "url.full": url,
        "server.address": "127.0.0.1",
        "server.port": port,
        "http.response.status_code": 503,
        "error.type": "503",
    }
    assert failed.status.status_code is StatusCode.ERROR
    assert ok.attributes == {
        "http.request.method": "POST",
        "url.full": url,
        "server.address": "127.0.0.1",
        "server.port": port,
        "http.request.resend_count": 1,
        "http.response.status_code": 200,
    }
    assert ok.status.status_code is StatusCode.UNSET
    # The trace context stays here: the provider never sees it.
    assert all("traceparent" not in {k.lower() for k in r["headers"]} for r in fake.requests())
