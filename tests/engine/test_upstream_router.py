"""The engine's gRPC surface with upstream models: routing by prefix, per-organization
resolution, errors with the HTTP status for the edge, and cancellation reaching the provider."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

from services.common.grpc_server import (
    ERROR_CODE_KEY,
    HTTP_STATUS_KEY,
    RETRY_AFTER_KEY,
    start_server,
    stop_server,
)
from services.common.settings import Settings
from services.engine.generation import Generator
from services.engine.registry import ModelRegistry
from services.engine.servicer import EngineServicer
from services.engine.upstream.router import UpstreamRouter
from services.pb.engine.v1 import engine_pb2, engine_pb2_grpc
from tests.fakes.anthropic_upstream import anthropic_fake
from tests.fakes.harness import RunningFake
from tests.fakes.openai_upstream import openai_fake
from tests.fakes.stubs import StubCredentials, chat

OPENAI_KEY = "sk-proj-org-a-openai-key-0001"
ANTHROPIC_KEY = "sk-ant-org-b-anthropic-key-0002"


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[RunningFake, RunningFake]]:
    with openai_fake() as oa, anthropic_fake() as an:
        yield oa, an


@pytest.fixture
async def engine(
    fakes: tuple[RunningFake, RunningFake],
) -> AsyncIterator[engine_pb2_grpc.EngineServiceStub]:
    oa, an = fakes
    oa.reset()
    an.reset()
    settings = Settings(
        openai_base_url=oa.url + "/v1",
        anthropic_base_url=an.url,
        upstream_max_retries=1,
        openai_models="gpt-4o-mini",
        anthropic_models="claude-3-5-haiku-latest",
    )
    credentials = StubCredentials(
        {("org-a", "openai"): OPENAI_KEY, ("org-b", "anthropic"): ANTHROPIC_KEY}
    )
    upstream = UpstreamRouter.from_settings(settings, credentials)
    # No hosted model: these tests are about the upstream side of the servicer.
    servicer = EngineServicer(Generator(ModelRegistry([]), {}), upstream)
    running = await start_server(
        "127.0.0.1:0",
        lambda server: engine_pb2_grpc.add_EngineServiceServicer_to_server(servicer, server),
        ["sluice.engine.v1.EngineService"],
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        yield engine_pb2_grpc.EngineServiceStub(channel)
    finally:
        await channel.close()
        await stop_server(running, grace_s=0)
        await upstream.aclose()


async def test_resolve_and_list_per_organization(
    engine: engine_pb2_grpc.EngineServiceStub,
) -> None:
    info = await engine.ResolveModel(
        engine_pb2.ResolveModelRequest(model="openai/gpt-4o", org_id="org-a")
    )
    assert (info.name, info.provider, info.context_length) == ("openai/gpt-4o", "openai", 128_000)
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await engine.ResolveModel(
            engine_pb2.ResolveModelRequest(model="openai/gpt-4o", org_id="org-b")
        )
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    assert dict(exc.value.trailing_metadata())[ERROR_CODE_KEY] == "model_not_found"
    assert "no openai credential" in (exc.value.details() or "")
    listed = await engine.ListModels(engine_pb2.ListModelsRequest(org_id="org-b"))
    assert [m.name for m in listed.models] == ["anthropic/claude-3-5-haiku-latest"]
    assert (await engine.ListModels(engine_pb2.ListModelsRequest())).models == []


async def test_hosted_names_still_go_to_the_hosted_path(
    engine: engine_pb2_grpc.EngineServiceStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await engine.ResolveModel(
            engine_pb2.ResolveModelRequest(model="mistral/large", org_id="org-a")
        )
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    assert "credential" not in (exc.value.details() or "")


async def test_generate_streams_through_the_organizations_provider(
    engine: engine_pb2_grpc.EngineServiceStub, fakes: tuple[RunningFake, RunningFake]
) -> None:
    oa, an = fakes
    an.script(chunks=["Bon", "jour"], prompt_tokens=6)
    req = chat("anthropic/claude-3-5-haiku-latest", ("user", "Salut"), org_id="org-b")
    msgs = [m async for m in engine.Generate(req)]
    assert [m.text for m in msgs] == ["Bon", "jour", ""]
    assert msgs[0].model.name == "anthropic/claude-3-5-haiku-latest"
    assert (msgs[-1].finish_reason, msgs[-1].usage.prompt_tokens) == ("stop", 6)
    [sent] = an.requests()
    assert sent["headers"]["x-api-key"] == ANTHROPIC_KEY
    assert oa.requests() == []


async def test_upstream_errors_carry_the_http_status_for_the_edge(
    engine: engine_pb2_grpc.EngineServiceStub, fakes: tuple[RunningFake, RunningFake]
) -> None:
    oa, _ = fakes
    oa.script(fail_next=1, fail_status=401)
    req = chat("openai/gpt-4o-mini", ("user", "hi"), org_id="org-a")
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        [m async for m in engine.Generate(req)]
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    trailing = dict(exc.value.trailing_metadata())
    assert trailing[HTTP_STATUS_KEY] == "502"
    assert trailing[ERROR_CODE_KEY] == "upstream_authentication_failed"
    assert OPENAI_KEY not in (exc.value.details() or "")

    oa.script(fail_next=5, fail_status=429, retry_after="120")
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        [m async for m in engine.Generate(req)]
    assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailing = dict(exc.value.trailing_metadata())
    assert (trailing[HTTP_STATUS_KEY], trailing[RETRY_AFTER_KEY]) == ("429", "120")


async def test_cancelled_call_closes_the_provider_stream(
    engine: engine_pb2_grpc.EngineServiceStub, fakes: tuple[RunningFake, RunningFake]
) -> None:
    oa, _ = fakes
    oa.script(chunks=[f"w{i} " for i in range(200)], chunk_delay_s=0.05)
    call = engine.Generate(chat("openai/gpt-4o-mini", ("user", "hi"), org_id="org-a"))
    first = await call.read()
    assert isinstance(first, engine_pb2.GenerateResponse)
    assert first.text == "w0 "
    call.cancel()
    for _ in range(200):
        if oa.requests()[0]["outcome"] == "aborted":
            break
        await asyncio.sleep(0.025)
    assert oa.requests()[0]["outcome"] == "aborted"


async def test_prompt_requests_are_refused_for_upstream_models(
    engine: engine_pb2_grpc.EngineServiceStub,
) -> None:
    req = engine_pb2.GenerateRequest(model="openai/gpt-4o-mini", prompt="Hi", org_id="org-a")
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        [m async for m in engine.Generate(req)]
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "/v1/chat/completions" in (exc.value.details() or "")
