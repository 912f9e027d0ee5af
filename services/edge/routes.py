"""HTTP endpoints: thin handlers that decode, call one function, encode."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.edge import admin, usage
from services.edge.backends import CONTROL_TIMEOUT_S, backends_of
from services.edge.errors import APIError, from_grpc
from services.edge.generation import ChatShape, CompletionShape, handle, parse_body
from services.edge.governance import authenticate
from services.edge.metrics import metrics_endpoint
from services.edge.protocol import ChatCompletionRequest, CompletionRequest
from services.pb.engine.v1 import engine_pb2


async def chat_completions(request: Request) -> Response:
    req = await parse_body(request, ChatCompletionRequest)
    backends = backends_of(request)
    return await handle(backends, request, ChatShape(req), backends.settings.request_timeout_s)


async def completions(request: Request) -> Response:
    req = await parse_body(request, CompletionRequest)
    backends = backends_of(request)
    return await handle(
        backends, request, CompletionShape(req), backends.settings.request_timeout_s
    )


def _model_json(info: engine_pb2.ModelInfo, model_id: str) -> dict[str, object]:
    return {"id": model_id, "object": "model", "created": info.created, "owned_by": info.owned_by}


async def list_models(request: Request) -> Response:
    backends = backends_of(request)
    principal = await authenticate(backends, request, "")
    try:
        resp = await backends.engine.ListModels(
            engine_pb2.ListModelsRequest(org_id=principal.org_id), timeout=CONTROL_TIMEOUT_S
        )
    except grpc.aio.AioRpcError as exc:
        raise from_grpc(exc, "engine") from None
    data = []
    for info in resp.models:
        data.append(_model_json(info, info.name))
        data.extend(_model_json(info, alias) for alias in info.aliases)
    return JSONResponse({"object": "list", "data": data})


async def retrieve_model(request: Request) -> Response:
    backends = backends_of(request)
    name = request.path_params["model"]
    principal = await authenticate(backends, request, name)
    try:
        info = await backends.resolve_model(name, principal.org_id)
    except grpc.aio.AioRpcError as exc:
        raise from_grpc(exc, "engine") from None
    return JSONResponse(_model_json(info, name))


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready when auth, metering and engine all answer their gRPC health checks."""
    backends = backends_of(request)

    async def check(name: str, channel: grpc.aio.Channel) -> tuple[str, str]:
        try:
            resp = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=2.0
            )
            return name, health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
        except grpc.aio.AioRpcError as exc:
            return name, exc.code().name

    names = ("auth", "metering", "engine")
    checks = (check(n, c) for n, c in zip(names, backends.channels, strict=True))
    results = dict(await asyncio.gather(*checks))
    ready = all(v == "SERVING" for v in results.values())
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "services": results},
        status_code=200 if ready else 503,
    )


async def not_found(request: Request) -> Response:
    raise APIError(
        404, f"Unknown request URL: {request.method} {request.url.path}.", code="unknown_url"
    )


ROUTES = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", retrieve_model, methods=["GET"]),
    Route("/v1/usage", usage.usage_records, methods=["GET"]),
    Route("/v1/usage/totals", usage.usage_totals, methods=["GET"]),
    Route("/v1/usage/budgets", usage.usage_budgets, methods=["GET"]),
    *admin.ROUTES,
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics_endpoint, methods=["GET"]),
]
