"""The OpenAI-compatible backend against the loopback fake: request shape, stream translation,
usage, retries before output only, the error table, and where the provider key goes."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import socket
from collections.abc import AsyncIterator, Iterator

import grpc
import httpx
import pytest

from services.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    SluiceError,
    Unavailable,
)
from services.common.grpc_server import HTTP_STATUS_KEY
from services.engine.upstream.base import (
    BACKOFF_CAP_S,
    MAX_RETRY_AFTER_S,
    backoff_s,
    retry_after_s,
)
from services.engine.upstream.catalog import Catalog, UpstreamModel
from services.engine.upstream.credentials import ProviderKey
from services.engine.upstream.openai import OpenAIBackend
from services.pb.engine.v1 import engine_pb2
from tests.fakes.harness import RunningFake
from tests.fakes.openai_upstream import openai_fake
from tests.fakes.stubs import chat, collect

KEY = "sk-proj-test0123456789abcdefXYZ"
MODEL = UpstreamModel("openai", "gpt-4o-mini")
CATALOG = Catalog({}, {"openai": 128_000})


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


@pytest.fixture
async def backend(fake: RunningFake, sleeps: Sleeps) -> AsyncIterator[OpenAIBackend]:
    async with httpx.AsyncClient(base_url=fake.url + "/v1", timeout=5.0) as client:
        yield OpenAIBackend(client, max_retries=3, sleep=sleeps, rng=lambda: 0.0)


def run(
    backend: OpenAIBackend, req: engine_pb2.GenerateRequest, model: UpstreamModel = MODEL
) -> AsyncIterator[engine_pb2.GenerateResponse]:
    return backend.generate(
        req, model, CATALOG.limits(model), CATALOG.info(model), ProviderKey(KEY)
    )


def hello(**fields: object) -> engine_pb2.GenerateRequest:
    return chat("openai/gpt-4o-mini", ("user", "Say hello."), **fields)


async def failure(stream: AsyncIterator[engine_pb2.GenerateResponse]) -> SluiceError:
    with pytest.raises(SluiceError) as info:
        await collect(stream)
    return info.value


async def test_stream_is_translated_delta_by_delta(
    backend: OpenAIBackend, fake: RunningFake
) -> None:
    fake.script(chunks=["Hel", "lo", ", world"], prompt_tokens=9, completion_tokens=4)
    msgs = await collect(run(backend, hello()))
    assert [m.text for m in msgs] == ["Hel", "lo", ", world", ""]
    assert [m.token_count for m in msgs[:-1]] == [1, 1, 1]
    first = msgs[0].model
    assert (first.name, first.provider, first.owned_by) == (
        "openai/gpt-4o-mini",
        "openai",
        "openai",
    )
    assert not msgs[1].HasField("model")
    # Usage is the provider's own (4), not the number of deltas (3).
    last = msgs[-1]
    assert last.finish_reason == "stop"
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (9, 4)
    assert not last.HasField("error")


async def test_request_carries_the_chat_and_sampling_parameters(
    backend: OpenAIBackend, fake: RunningFake
) -> None:
    req = chat(
        "openai/gpt-4o-mini",
        ("developer", "Be brief."),
        ("user", "Hi"),
        ("assistant", "Hello"),
        ("user", "Again"),
        max_tokens=50,
        stop=["\n\n", "END"],
        sampling={"temperature": 0.5, "top_p": 0.25, "seed": 7},
    )
    await collect(run(backend, req))
    [sent] = fake.requests()
    assert sent["path"] == "/v1/chat/completions"
    body = sent["body"]
    assert body["model"] == "gpt-4o-mini"
    assert body["messages"] == [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Again"},
    ]
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert (body["temperature"], body["top_p"], body["seed"]) == (0.5, 0.25, 7)
    assert body["stop"] == ["\n\n", "END"]
    assert body["max_tokens"] == 50


async def test_unset_parameters_are_not_sent(backend: OpenAIBackend, fake: RunningFake) -> None:
    await collect(run(backend, hello()))
    body = fake.requests()[0]["body"]
    for name in ("temperature", "top_p", "seed", "stop", "max_tokens"):
        assert name not in body


@pytest.mark.parametrize("reason", ["stop", "length", "content_filter", "tool_calls"])
async def test_finish_reasons_pass_through(
    backend: OpenAIBackend, fake: RunningFake, reason: str
) -> None:
    fake.script(finish_reason=reason)
    msgs = await collect(run(backend, hello()))
    assert msgs[-1].finish_reason == reason


async def test_top_k_and_prompts_are_refused_before_any_request(
    backend: OpenAIBackend, fake: RunningFake
) -> None:
    err = await failure(run(backend, hello(sampling={"top_k": 5})))
    assert isinstance(err, InvalidArgument)
    assert err.param == "top_k"
    legacy = engine_pb2.GenerateRequest(model="openai/gpt-4o-mini", prompt="Once upon a time")
    err = await failure(run(backend, legacy))
    assert isinstance(err, InvalidArgument)
    assert "/v1/chat/completions" in err.message
    assert fake.requests() == []


@pytest.mark.parametrize(
    ("fields", "sent"),
    [
        ({"max_tokens": 1000, "max_context": 300}, 300),
        ({"max_tokens": 100, "max_context": 300}, 100),
        # No max_tokens: the plan's cap, within what the model can produce (16,384 here).
        ({"max_context": 500}, 500),
        ({"max_context": 1_000_000}, 16_384),
    ],
)
async def test_plan_max_context_caps_max_tokens(
    backend: OpenAIBackend, fake: RunningFake, fields: dict[str, int], sent: int
) -> None:
    await collect(run(backend, hello(**fields)))
    assert fake.requests()[0]["body"]["max_tokens"] == sent


async def test_retries_before_output_honour_retry_after(
    backend: OpenAIBackend, fake: RunningFake, sleeps: Sleeps
) -> None:
    fake.script(fail_next=2, fail_status=429, retry_after="2")
    msgs = await collect(run(backend, hello()))
    assert msgs[-1].finish_reason == "stop"
    assert [r["outcome"] for r in fake.requests()] == ["failed", "failed", "completed"]
    assert sleeps == [2.0, 2.0]


async def test_retry_after_ms_wins_over_retry_after(
    backend: OpenAIBackend, fake: RunningFake, sleeps: Sleeps
) -> None:
    fake.script(fail_next=1, fail_status=503, retry_after="3", retry_after_ms="250")
    await collect(run(backend, hello()))
    assert sleeps == [0.25]


async def test_server_errors_back_off_exponentially_then_give_up(
    backend: OpenAIBackend, fake: RunningFake, sleeps: Sleeps
) -> None:
    fake.script(fail_next=10, fail_status=500)
    err = await failure(run(backend, hello()))
    assert isinstance(err, Unavailable)
    assert err.code == "upstream_error"
    assert err.metadata[HTTP_STATUS_KEY] == "502"
    assert len(fake.requests()) == 4  # the first try and three retries
    assert sleeps == [0.5, 1.0, 2.0]


async def test_no_retry_after_the_first_delta(
    backend: OpenAIBackend, fake: RunningFake, sleeps: Sleeps
) -> None:
    fake.script(chunks=["a", "b", "c", "d"], drop_after_chunks=2)
    msgs = await collect(run(backend, hello()))
    assert [m.text for m in msgs] == ["a", "b", ""]
    last = msgs[-1]
    assert last.finish_reason == ""
    assert last.error.http_status == 502
    assert (last.error.type, last.error.code) == ("upstream_error", "upstream_stream_failed")
    assert "OpenAI" in last.error.message
    # The prompt count comes with the usage chunk, which never arrived.
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (0, 2)
    assert [r["outcome"] for r in fake.requests()] == ["dropped"]
    assert sleeps == []


async def test_error_event_mid_stream_ends_the_stream(
    backend: OpenAIBackend, fake: RunningFake
) -> None:
    fake.script(chunks=["a", "b", "c"], error_event_after_chunks=1, error_message="boom")
    msgs = await collect(run(backend, hello()))
    assert [m.text for m in msgs] == ["a", ""]
    assert msgs[-1].error.code == "upstream_stream_failed"
    assert "boom" in msgs[-1].error.message
    assert len(fake.requests()) == 1


async def test_a_stream_broken_before_output_is_retried(
    backend: OpenAIBackend, fake: RunningFake, sleeps: Sleeps
) -> None:
    fake.script(drop_after_chunks=0)
    err = await failure(run(backend, hello()))
    assert isinstance(err, Unavailable)
    assert [r["outcome"] for r in fake.requests()] == ["dropped"] * 4


@pytest.mark.parametrize(
    ("status", "kind", "grpc_code", "http", "code"),
    [
        (400, InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT, "400", "context_length_exceeded"),
        (422, InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT, "400", ""),
        (401, FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION, "502",
         "upstream_authentication_failed"),
        (403, FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION, "502",
         "upstream_authentication_failed"),
        (404, NotFound, grpc.StatusCode.NOT_FOUND, "404", "model_not_found"),
        (429, ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED, "429",
         "upstream_rate_limited"),
        (500, Unavailable, grpc.StatusCode.UNAVAILABLE, "502", "upstream_error"),
        (503, Unavailable, grpc.StatusCode.UNAVAILABLE, "502", "upstream_error"),
    ],
)  # fmt: skip
async def test_error_table(
    backend: OpenAIBackend,
    fake: RunningFake,
    status: int,
    kind: type[SluiceError],
    grpc_code: grpc.StatusCode,
    http: str,
    code: str,
) -> None:
    fake.script(
        fail_next=10,
        fail_status=status,
        error_code="context_length_exceeded" if status == 400 else None,
        error_message="Upstream says no." if status in (400, 422) else "",
        retry_after="0",
    )
    err = await failure(run(backend, hello()))
    assert type(err) is kind
    assert err.grpc_status == grpc_code
    assert err.metadata[HTTP_STATUS_KEY] == http
    assert err.code == code
    if status in (400, 422):
        assert err.message == "Upstream says no."
    if status in (401, 403):
        assert "organization's openai credential" in err.message
    retried = status in (429, 500, 503)
    assert len(fake.requests()) == (4 if retried else 1)


async def test_rate_limit_keeps_the_providers_retry_after(
    backend: OpenAIBackend, fake: RunningFake, sleeps: Sleeps
) -> None:
    # Longer than we wait in-line: not retried, and the client is told when to come back.
    wait = int(MAX_RETRY_AFTER_S) + 30
    fake.script(fail_next=1, fail_status=429, retry_after=str(wait))
    err = await failure(run(backend, hello()))
    assert isinstance(err, ResourceExhausted)
    assert err.retry_after == wait  # type: ignore[attr-defined]
    assert sleeps == []
    assert len(fake.requests()) == 1


async def test_timeouts_before_output_are_retried_then_reported(
    fake: RunningFake, sleeps: Sleeps
) -> None:
    fake.script(response_delay_s=1.0)
    timeout = httpx.Timeout(0.1, connect=1.0)
    async with httpx.AsyncClient(base_url=fake.url + "/v1", timeout=timeout) as client:
        backend = OpenAIBackend(client, max_retries=1, sleep=sleeps, rng=lambda: 0.0)
        err = await failure(run(backend, hello()))
    assert isinstance(err, Unavailable)
    assert err.code == "upstream_timeout"
    assert err.metadata[HTTP_STATUS_KEY] == "504"
    assert len(sleeps) == 1


async def test_connection_refused_is_retried_then_reported(sleeps: Sleeps) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}/v1") as client:
        backend = OpenAIBackend(client, max_retries=2, sleep=sleeps, rng=lambda: 0.0)
        err = await failure(run(backend, hello()))
    assert isinstance(err, Unavailable)
    assert (err.code, err.metadata[HTTP_STATUS_KEY]) == ("upstream_error", "502")
    assert sleeps == [0.5, 1.0]


async def test_key_is_only_in_the_upstream_authorization_header(
    backend: OpenAIBackend, fake: RunningFake, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    msgs = await collect(run(backend, hello()))
    [sent] = fake.requests()
    assert sent["headers"]["authorization"] == f"Bearer {KEY}"
    assert KEY not in str(sent["body"])
    assert all(KEY.encode() not in m.SerializeToString() for m in msgs)
    # httpx and httpcore log at DEBUG here; neither prints request headers.
    assert any(r.name.startswith(("httpx", "httpcore")) for r in caplog.records)
    assert KEY not in caplog.text
    assert KEY not in repr(ProviderKey(KEY))


async def test_provider_messages_never_echo_a_key(
    backend: OpenAIBackend, fake: RunningFake, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # A 401 from OpenAI quotes a masked key; our message is our own.
    fake.script(expected_key="sk-proj-the-right-one")
    err = await failure(run(backend, hello()))
    assert isinstance(err, FailedPrecondition)
    assert "sk-" not in err.message
    # Any other message is scrubbed of the key, whole or masked.
    fake.script(fail_next=1, fail_status=400, error_message=f"bad key {KEY} or sk-pr****XYZ")
    err = await failure(run(backend, hello()))
    assert KEY not in err.message
    assert "sk-pr" not in err.message
    assert KEY not in caplog.text


async def test_cancelling_the_stream_closes_the_upstream_request(
    backend: OpenAIBackend, fake: RunningFake
) -> None:
    fake.script(chunks=[f"t{i} " for i in range(100)], chunk_delay_s=0.05)
    stream = run(backend, hello())
    first = await anext(stream)
    assert first.text == "t0 "
    await stream.aclose()
    for _ in range(200):
        if fake.requests()[0]["outcome"] == "aborted":
            break
        await asyncio.sleep(0.025)
    assert fake.requests()[0]["outcome"] == "aborted"


async def test_fake_control_api_over_http(fake: RunningFake) -> None:
    async with httpx.AsyncClient(base_url=fake.url) as client:
        r = await client.post("/_control/script", json={"reply": "Hi there", "prompt_tokens": 3})
        assert r.status_code == 200
        assert (await client.get("/_control/script")).json()["reply"] == "Hi there"
        r = await client.post(
            "/v1/chat/completions",
            headers={"authorization": "Bearer sk-x"},
            json={"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]},
        )
        body = r.json()
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["content"] == "Hi there"
        assert body["usage"]["prompt_tokens"] == 3
        logged = (await client.get("/_control/requests")).json()["requests"]
        assert [(x["path"], x["outcome"]) for x in logged] == [
            ("/v1/chat/completions", "completed")
        ]
        await client.delete("/_control/requests")
        assert (await client.get("/_control/requests")).json()["requests"] == []
        assert (await client.post("/_control/script", json={"nope": 1})).status_code == 400


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
    backend: OpenAIBackend, fake: RunningFake, sleeps: Sleeps
) -> None:
    fake.script(fail_next=5, fail_status=429, error_code="insufficient_quota",
                error_message="You exceeded your current quota.")  # fmt: skip
    err = await failure(run(backend, hello()))
    assert isinstance(err, ResourceExhausted)
    assert err.code == "upstream_rate_limited"
    assert "exceeded your current quota" in err.message
    assert len(fake.requests()) == 1
    assert sleeps == []
