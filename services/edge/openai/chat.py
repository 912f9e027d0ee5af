"""`POST /v1/chat/completions`: hosted models through the engine, upstream models through the
organization's provider."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from services.edge.backends import backends_of
from services.edge.body import json_object, read_body, validate
from services.edge.errors import APIError
from services.edge.openai import hosted, upstream_chat
from services.edge.openai.protocol import ChatCompletionRequest
from services.edge.providers.catalog import is_upstream


def model_name(body: dict[str, object]) -> str:
    """The body's `model`, which decides where the request goes; a 400 when it is not a name."""
    model = body.get("model")
    if model is None:
        raise APIError(
            400,
            "Missing required parameter: 'model'.",
            param="model",
            code="missing_required_parameter",
        )
    if not isinstance(model, str) or not model:
        raise APIError(
            400, "'model' must be a non-empty string.", param="model", code="invalid_value"
        )
    return model


async def chat_completions(request: Request) -> Response:
    raw = await read_body(request)
    body = json_object(raw)
    backends = backends_of(request)
    if is_upstream(model_name(body)):
        return await upstream_chat.chat(backends, request, body, raw)
    shape = hosted.ChatShape(validate(body, ChatCompletionRequest))
    return await hosted.handle(backends, request, shape)
