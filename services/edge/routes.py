"""The HTTP surface: one route table; each endpoint family lives in its own module."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.edge import admin, openapi, usage
from services.edge.anthropic import messages
from services.edge.backends import backends_of
from services.edge.console import site as console
from services.edge.metrics import metrics_endpoint
from services.edge.openai import chat, completions, embeddings, models, responses


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready when auth and metering answer their gRPC health checks, at least one engine's
    health watch says SERVING, and the edge is not draining. `engines` shows each engine's
    health and this edge's calls in flight on it."""
    backends = backends_of(request)

    async def check(name: str, channel: grpc.aio.Channel) -> tuple[str, str]:
        try:
            resp = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=2.0
            )
            return name, health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
        except grpc.aio.AioRpcError as exc:
            return name, exc.code().name

    names = ("auth", "metering")
    checks = (check(n, c) for n, c in zip(names, backends.channels, strict=True))
    results = dict(await asyncio.gather(*checks))
    results["engine"] = "SERVING" if backends.engines.any_usable() else "NOT_SERVING"
    draining = backends.drain.draining
    ready = all(v == "SERVING" for v in results.values()) and not draining
    status = "draining" if draining else "ready" if ready else "not_ready"
    return JSONResponse(
        {"status": status, "services": results, "engines": backends.engines.states()},
        status_code=200 if ready else 503,
    )


ROUTES = [
    Route("/v1/chat/completions", chat.chat_completions, methods=["POST"]),
    Route("/v1/completions", completions.completions, methods=["POST"]),
    Route("/v1/embeddings", embeddings.embeddings, methods=["POST"]),
    Route("/v1/responses", responses.create, methods=["POST"]),
    Route("/v1/responses/{response_id}", responses.retrieve, methods=["GET"]),
    Route("/v1/responses/{response_id}", responses.delete, methods=["DELETE"]),
    Route("/v1/messages", messages.messages, methods=["POST"]),
    Route("/v1/messages/count_tokens", messages.count_tokens, methods=["POST"]),
    Route("/v1/models", models.list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", models.retrieve_model, methods=["GET"]),
    Route("/v1/usage", usage.usage_records, methods=["GET"]),
    Route("/v1/usage/totals", usage.usage_totals, methods=["GET"]),
    Route("/v1/usage/budgets", usage.usage_budgets, methods=["GET"]),
    *admin.ROUTES,
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics_endpoint, methods=["GET"]),
    Route("/openapi.json", openapi.openapi_json, methods=["GET"]),
    *console.ROUTES,
]
