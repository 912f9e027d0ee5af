"""The engine's gRPC servicer: decode, call the `Generator`, encode (and, with tracing on, fill
in the call's server span with the generation's GenAI attributes)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from opentelemetry import trace

from services.common.genai_spans import EngineGeneration
from services.engine.generation import Generator
from services.pb.engine.v1 import engine_pb2, engine_pb2_grpc


class EngineServicer(engine_pb2_grpc.EngineServiceServicer):
    def __init__(self, generator: Generator) -> None:
        self.generator = generator

    async def Generate(  # noqa: N802 - gRPC method name
        self, request: engine_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[engine_pb2.GenerateResponse]:
        # The server span of this call (services.common.tracing), or a no-op one.
        span = trace.get_current_span()
        record = EngineGeneration(span, request) if span.is_recording() else None
        async for msg in self.generator.generate(request):
            if record is not None:
                record.observe(msg)
            yield msg

    async def ListModels(  # noqa: N802
        self, request: engine_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> engine_pb2.ListModelsResponse:
        return engine_pb2.ListModelsResponse(
            models=[m.info() for m in self.generator.models.values()]
        )

    async def ResolveModel(  # noqa: N802
        self, request: engine_pb2.ResolveModelRequest, context: grpc.aio.ServicerContext
    ) -> engine_pb2.ModelInfo:
        return self.generator.resolve(request.model).info()

    async def CountTokens(  # noqa: N802
        self, request: engine_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> engine_pb2.CountTokensResponse:
        model = self.generator.resolve(request.model)
        ids = self.generator.prompt_tokens(model, request)
        return engine_pb2.CountTokensResponse(prompt_tokens=len(ids), model=model.info())
