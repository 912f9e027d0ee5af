"""`GET /v1/models` and `GET /v1/models/{model}`: hosted models and the organization's
upstream models."""

from __future__ import annotations

import grpc
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from services.edge.backends import backends_of
from services.edge.errors import from_grpc
from services.edge.governance import authenticate
from services.pb.engine.v1 import engine_pb2


def model_json(info: engine_pb2.ModelInfo, model_id: str) -> dict[str, object]:
    return {"id": model_id, "object": "model", "created": info.created, "owned_by": info.owned_by}


async def list_models(request: Request) -> Response:
    backends = backends_of(request)
    principal = await authenticate(backends, request, "")
    data = []
    for info in await backends.list_models(principal.org_id):
        data.append(model_json(info, info.name))
        data.extend(model_json(info, alias) for alias in info.aliases)
    return JSONResponse({"object": "list", "data": data})


async def retrieve_model(request: Request) -> Response:
    backends = backends_of(request)
    name = request.path_params["model"]
    principal = await authenticate(backends, request, name)
    try:
        target = await backends.resolve(name, principal.org_id)
    except grpc.aio.AioRpcError as exc:
        raise from_grpc(exc, "engine") from None
    return JSONResponse(model_json(target.info, name))
