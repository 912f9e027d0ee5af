"""Generate through the real EngineServicer over gRPC: the new fields travel, and a schema that
does not compile is INVALID_ARGUMENT naming the field."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from services.common.grpc_server import ERROR_PARAM_KEY, start_server, stop_server
from services.engine.generation import Generator, HostedModel, loop_dispatch
from services.engine.registry import ModelRegistry, load_entry
from services.engine.runtime import DecoderRuntime
from services.engine.scheduler import Scheduler
from services.engine.servicer import EngineServicer
from services.engine.text import TextCodec
from services.pb.engine.v1 import engine_pb2 as pb
from services.pb.engine.v1 import engine_pb2_grpc


@pytest.fixture
async def engine(model_folder: Path) -> AsyncIterator[engine_pb2_grpc.EngineServiceStub]:
    entry = load_entry(model_folder, 1024)
    runtime = DecoderRuntime(model_folder, max_batch=4, max_len=1024)
    codec = TextCodec.from_folder(model_folder)
    sched = Scheduler(
        runtime, codec.tokenizer, max_queue=8, dispatch=loop_dispatch(asyncio.get_running_loop())
    )
    model = HostedModel(entry, codec, sched, runtime.provider)
    sched.start()
    servicer = EngineServicer(Generator(ModelRegistry([entry]), {entry.name: model}, 64))
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
        sched.stop()


def _request(**fields: object) -> pb.GenerateRequest:
    msgs = pb.Messages(messages=[pb.ChatMessage(role="user", content="Give me a city as JSON.")])
    return pb.GenerateRequest(
        model="smollm2-135m-instruct",
        messages=msgs,
        sampling=pb.SamplingParams(temperature=0.0),
        **fields,  # type: ignore[arg-type]
    )


async def test_structured_output_with_logprobs_and_two_choices(
    engine: engine_pb2_grpc.EngineServiceStub,
) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"],
    }
    fmt = pb.ResponseFormat(
        type="json_schema", json_schema=pb.JsonSchemaFormat(schema=json.dumps(schema), strict=True)
    )
    msgs = [
        m
        async for m in engine.Generate(
            _request(response_format=fmt, n=2, logprobs=True, top_logprobs=2, max_tokens=40)
        )
    ]
    texts = {i: "".join(m.text for m in msgs if m.index == i) for i in (0, 1)}
    assert texts[0] == texts[1] and set(json.loads(texts[0])) == {"city"}
    finishes = [m.finish_reason for m in msgs if m.finish_reason]
    assert finishes == ["stop", "stop"]
    assert msgs[-1].usage.completion_tokens == sum(len(m.logprobs) for m in msgs)
    # Where the grammar allows a single token, the list holds that one alone.
    assert all(1 <= len(lp.top_logprobs) <= 2 for m in msgs for lp in m.logprobs)


async def test_a_schema_that_does_not_compile_names_its_field(
    engine: engine_pb2_grpc.EngineServiceStub,
) -> None:
    fmt = pb.ResponseFormat(
        type="json_schema",
        json_schema=pb.JsonSchemaFormat(schema=json.dumps({"type": "objekt"})),
    )
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        async for _ in engine.Generate(_request(response_format=fmt)):
            pass
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    metadata = dict(exc.value.trailing_metadata() or ())
    assert metadata[ERROR_PARAM_KEY] == "response_format.json_schema.schema"
