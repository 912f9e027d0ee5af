"""`POST /v1/completions`: the legacy text-completion endpoint, for hosted models."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from services.edge.backends import backends_of
from services.edge.body import parse_body
from services.edge.openai import hosted
from services.edge.openai.protocol import CompletionRequest


async def completions(request: Request) -> Response:
    req = await parse_body(request, CompletionRequest)
    return await hosted.handle(backends_of(request), request, hosted.CompletionShape(req))
