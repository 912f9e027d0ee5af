"""The Anthropic backend against the loopback fake: the Messages API request, SSE events to
deltas, stop reasons, usage, retries before output only, errors, and the key's one place."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator

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
from services.engine.upstream.anthropic import AnthropicBackend, translate_messages
from services.engine.upstream.catalog import Catalog, UpstreamModel
from services.engine.upstream.credentials import ProviderKey
from services.pb.engine.v1 import engine_pb2
from tests.fakes.anthropic_upstream import anthropic_fake
from tests.fakes.harness import RunningFake
from tests.fakes.stubs import chat, collect

KEY = "sk-ant-api03-test0123456789abcdef"
MODEL = UpstreamModel("anthropic", "claude-sonnet-4-0")
CATALOG = Catalog({}, {"anthropic": 200_000})


@pytest.fixture(scope="module")
def fake() -> Iterator[RunningFake]:
    with anthropic_fake() as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh(fake: RunningFake) -> None:
    fake.reset()


class Sleeps(list[float]):
    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
async def backend(fake: RunningFake, sleeps: Sleeps) -> AsyncIterator[AnthropicBackend]:
    async with httpx.AsyncClient(base_url=fake.url, timeout=5.0) as client:
        yield AnthropicBackend(
            client, max_retries=3, sleep=sleeps, rng=lambda: 0.0, default_max_tokens=4096
        )


def run(
    backend: AnthropicBackend, req: engine_pb2.GenerateRequest, model: UpstreamModel = MODEL
) -> AsyncIterator[engine_pb2.GenerateResponse]:
    return backend.generate(
        req, model, CATALOG.limits(model), CATALOG.info(model), ProviderKey(KEY)
    )


def hello(**fields: object) -> engine_pb2.GenerateRequest:
    return chat("anthropic/claude-sonnet-4-0", ("user", "Say hello."), **fields)


async def failure(stream: AsyncIterator[engine_pb2.GenerateResponse]) -> SluiceError:
    with pytest.raises(SluiceError) as info:
        await collect(stream)
    return info.value


async def test_events_become_deltas_with_the_providers_usage(
    backend: AnthropicBackend, fake: RunningFake
) -> None:
    fake.script(chunks=["Hi", " there", "!"], prompt_tokens=20, cached_tokens=8,
                completion_tokens=5)  # fmt: skip
    msgs = await collect(run(backend, hello()))
    assert [m.text for m in msgs] == ["Hi", " there", "!", ""]
    assert all(m.token_count == 1 for m in msgs[:-1])
    assert msgs[0].model.name == "anthropic/claude-sonnet-4-0"
    assert msgs[0].model.provider == "anthropic"
    last = msgs[-1]
    assert last.finish_reason == "stop"
    # input_tokens (12) plus cache reads (8); output_tokens from message_delta.
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (20, 5)


async def test_request_follows_the_messages_api(
    backend: AnthropicBackend, fake: RunningFake
) -> None:
    req = chat(
        "anthropic/claude-sonnet-4-0",
        ("system", "You are terse."),
        ("user", "Hi"),
        ("developer", "Answer in English."),
        ("user", "Still there?"),
        ("assistant", "Yes."),
        ("user", "Good."),
        stop=["END"],
        sampling={"temperature": 0.3, "top_p": 0.9, "top_k": 40},
    )
    await collect(run(backend, req))
    [sent] = fake.requests()
    assert sent["path"] == "/v1/messages"
    assert sent["headers"]["x-api-key"] == KEY
    assert sent["headers"]["anthropic-version"] == "2023-06-01"
    assert "authorization" not in sent["headers"]
    body = sent["body"]
    assert body["model"] == "claude-sonnet-4-0"
    assert body["system"] == "You are terse.\n\nAnswer in English."
    assert body["messages"] == [
        {"role": "user", "content": "Hi\n\nStill there?"},
        {"role": "assistant", "content": "Yes."},
        {"role": "user", "content": "Good."},
    ]
    assert body["stop_sequences"] == ["END"]
    assert (body["temperature"], body["top_p"], body["top_k"]) == (0.3, 0.9, 40)
    assert body["max_tokens"] == 4096
    assert body["stream"] is True
    assert KEY not in str(body)


@pytest.mark.parametrize(
    ("fields", "sent"),
    [
        ({}, 4096),
        ({"max_tokens": 200}, 200),
        ({"max_context": 1000}, 1000),
        ({"max_tokens": 5000, "max_context": 1000}, 1000),
    ],
)
async def test_max_tokens_default_and_plan_cap(
    backend: AnthropicBackend, fake: RunningFake, fields: dict[str, int], sent: int
) -> None:
    await collect(run(backend, hello(**fields)))
    assert fake.requests()[0]["body"]["max_tokens"] == sent


async def test_default_max_tokens_stays_within_the_models_output_cap(
    backend: AnthropicBackend, fake: RunningFake
) -> None:
    haiku = UpstreamModel("anthropic", "claude-3-haiku-20240307")
    await collect(run(backend, hello(), haiku))
    assert fake.requests()[0]["body"]["max_tokens"] == 4096
    backend.default_max_tokens = 10_000
    fake.reset()
    await collect(run(backend, hello(), haiku))
    assert fake.requests()[0]["body"]["max_tokens"] == 4096


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
    ],
)
async def test_stop_reasons(
    backend: AnthropicBackend, fake: RunningFake, stop_reason: str, finish: str
) -> None:
    fake.script(finish_reason=stop_reason)
    msgs = await collect(run(backend, hello()))
    assert msgs[-1].finish_reason == finish


def test_translation_merges_turns_and_refuses_what_has_no_equivalent() -> None:
    system, turns = translate_messages(
        [("assistant", "a"), ("assistant", "b"), ("user", "c"), ("user", "d")]
    )
    assert system == ""
    assert turns == [
        {"role": "assistant", "content": "a\n\nb"},
        {"role": "user", "content": "c\n\nd"},
    ]
    with pytest.raises(InvalidArgument):
        translate_messages([("system", "only a system prompt")])
    with pytest.raises(InvalidArgument):
        translate_messages([("user", "x"), ("tool", "result")])


async def test_unsupported_inputs_are_refused_before_any_request(
    backend: AnthropicBackend, fake: RunningFake
) -> None:
    err = await failure(run(backend, hello(sampling={"seed": 3})))
    assert isinstance(err, InvalidArgument)
    assert err.param == "seed"
    legacy = engine_pb2.GenerateRequest(model="anthropic/claude-sonnet-4-0", prompt="Once")
    err = await failure(run(backend, legacy))
    assert isinstance(err, InvalidArgument)
    assert err.param == "prompt"
    assert fake.requests() == []


async def test_overloaded_is_retried_with_retry_after(
    backend: AnthropicBackend, fake: RunningFake, sleeps: Sleeps
) -> None:
    fake.script(fail_next=2, fail_status=529, retry_after="1")
    msgs = await collect(run(backend, hello()))
    assert msgs[-1].finish_reason == "stop"
    assert [r["outcome"] for r in fake.requests()] == ["failed", "failed", "completed"]
    assert sleeps == [1.0, 1.0]


async def test_error_event_before_output_is_retried(
    backend: AnthropicBackend, fake: RunningFake, sleeps: Sleeps
) -> None:
    fake.script(error_event_after_chunks=0)
    err = await failure(run(backend, hello()))
    assert isinstance(err, Unavailable)
    assert err.metadata[HTTP_STATUS_KEY] == "502"
    assert [r["outcome"] for r in fake.requests()] == ["error_event"] * 4
    assert sleeps == [0.5, 1.0, 2.0]


async def test_failure_after_output_ends_with_partial_usage_and_no_retry(
    backend: AnthropicBackend, fake: RunningFake, sleeps: Sleeps
) -> None:
    fake.script(chunks=["one ", "two ", "three"], prompt_tokens=15, error_event_after_chunks=2)
    msgs = await collect(run(backend, hello()))
    assert [m.text for m in msgs] == ["one ", "two ", ""]
    last = msgs[-1]
    assert last.finish_reason == ""
    assert (last.error.http_status, last.error.type, last.error.code) == (
        502,
        "upstream_error",
        "upstream_stream_failed",
    )
    # The prompt count is known from message_start; completion is what was delivered.
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (15, 2)
    assert len(fake.requests()) == 1
    assert sleeps == []


async def test_dropped_connection_after_output(
    backend: AnthropicBackend, fake: RunningFake
) -> None:
    fake.script(chunks=["a", "b", "c"], drop_after_chunks=1)
    msgs = await collect(run(backend, hello()))
    assert [m.text for m in msgs] == ["a", ""]
    assert msgs[-1].error.code == "upstream_stream_failed"
    assert msgs[-1].usage.completion_tokens == 1
    assert [r["outcome"] for r in fake.requests()] == ["dropped"]


@pytest.mark.parametrize(
    ("status", "kind", "http", "code"),
    [
        (400, InvalidArgument, "400", ""),
        (401, FailedPrecondition, "502", "upstream_authentication_failed"),
        (403, FailedPrecondition, "502", "upstream_authentication_failed"),
        (404, NotFound, "404", "model_not_found"),
        (413, InvalidArgument, "413", ""),
        (429, ResourceExhausted, "429", "upstream_rate_limited"),
        (500, Unavailable, "502", "upstream_error"),
        (529, Unavailable, "502", "upstream_error"),
    ],
)
async def test_error_table(
    backend: AnthropicBackend,
    fake: RunningFake,
    status: int,
    kind: type[SluiceError],
    http: str,
    code: str,
) -> None:
    fake.script(fail_next=10, fail_status=status, error_message="Provider detail.", retry_after="5")
    err = await failure(run(backend, hello()))
    assert type(err) is kind
    assert err.metadata[HTTP_STATUS_KEY] == http
    assert err.code == code
    if status in (400, 413):
        assert err.message == "Provider detail."
    if status in (401, 403):
        assert "organization's anthropic credential" in err.message
    if status == 429:
        assert err.retry_after == 5  # type: ignore[attr-defined]


async def test_rejected_key_reads_as_the_organizations_credential(
    backend: AnthropicBackend, fake: RunningFake, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.script(expected_key="sk-ant-the-right-one")
    err = await failure(run(backend, hello()))
    assert isinstance(err, FailedPrecondition)
    assert "API key is fine" in err.message
    assert KEY not in err.message
    assert KEY not in caplog.text
    assert len(fake.requests()) == 1


async def test_fake_answers_without_streaming_too(fake: RunningFake) -> None:
    fake.script(reply="Plain answer.", prompt_tokens=4)
    async with httpx.AsyncClient(base_url=fake.url) as client:
        r = await client.post(
            "/v1/messages",
            headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
            json={
                "model": "claude-3-5-haiku-latest",
                "max_tokens": 10,
                "messages": [{"role": "user", "content": "x"}],
            },
        )
        body = r.json()
        assert body["type"] == "message"
        assert body["content"] == [{"type": "text", "text": "Plain answer."}]
        assert body["usage"] == {"input_tokens": 4, "output_tokens": 2}
        r = await client.post(
            "/v1/messages",
            headers={"x-api-key": "k"},
            json={"model": "m", "max_tokens": 1, "messages": []},
        )
        assert r.status_code == 400
        assert r.json()["error"]["type"] == "invalid_request_error"
