"""The engine's gRPC servicer: decode, call the `Generator` or the `UpstreamRouter`, encode.

Model names with a provider prefix ("openai/...", "anthropic/...") go to the upstream router;
every other name is a hosted model.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from services.engine.generation import Generator
from services.engine.upstream.catalog import is_upstream
from services.engine.upstream.router import UpstreamRouter
from services.pb.engine.v1 import engine_pb2, engine_pb2_grpc


class EngineServicer(engine_pb2_grpc.EngineServiceServicer):
    def __init__(self, generator: Generator, upstream: UpstreamRouter | None = None) -> None:
        self.generator = generator
        self.upstream = upstream

    def _upstream(self, model: str) -> UpstreamRouter | None:
        return self.upstream if self.upstream is not None and is_upstream(model) else None

    async def Generate(  # noqa: N802 - gRPC method name
        self, request: engine_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[engine_pb2.GenerateResponse]:
        upstream = self._upstream(request.model)
        stream = upstream.generate(request) if upstream else self.generator.generate(request)
        async for msg in stream:
            yield msg

    async def ListModels(  # noqa: N802
        self, request: engine_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> engine_pb2.ListModelsResponse:
        models = [m.info() for m in self.generator.models.values()]
        if self.upstream is not None and request.org_id:
            models.extend(await self.upstream.list_models(request.org_id))
        return engine_pb2.ListModelsResponse(models=models)

    async def ResolveModel(  # noqa: N802
        self, request: engine_pb2.ResolveModelRequest, context: grpc.aio.ServicerContext
    ) -> engine_pb2.ModelInfo:
        if upstream := self._upstream(request.model):
            return await upstream.resolve(request.model, request.org_id)
        return self.generator.resolve(request.model).info()

    async def CountTokens(  # noqa: N802
        self, request: engine_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> engine_pb2.CountTokensResponse:
        if upstream := self._upstream(request.model):
            return upstream.count_tokens(request.model)
        model = self.generator.resolve(request.model)
        ids = self.generator.prompt_tokens(model, request)
        return engine_pb2.CountTokensResponse(prompt_tokens=len(ids), model=model.info())
