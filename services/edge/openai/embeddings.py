"""`POST /v1/embeddings`: `openai/<embedding model>` through the organization's OpenAI
credential, governed and metered like chat.

The body is forwarded whole (only `model` becomes the provider's name); the reservation is the
input's size (bytes of its strings, or the count of its token ids) and no completion; the ledger
records the provider's own `usage.prompt_tokens`. Hosted models and Anthropic (which has no
embeddings API) are refused with a 400 naming `model`.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from services.edge.backends import backends_of
from services.edge.body import json_object, read_body
from services.edge.errors import APIError
from services.edge.governance import Bounds, admit
from services.edge.openai import bounds
from services.edge.openai.chat import model_name
from services.edge.providers import openai
from services.edge.providers.base import as_dict, dump
from services.edge.providers.catalog import OPENAI
from services.edge.targets import Target
from services.edge.upstream import account, guarded, provider_key


async def embeddings(request: Request) -> Response:
    body = json_object(await read_body(request))
    name = model_name(body)
    if "input" not in body:
        raise APIError(
            400,
            "Missing required parameter: 'input'.",
            param="input",
            code="missing_required_parameter",
        )
    prompt = bounds.embeddings_input_bound(body["input"])

    def of(target: Target) -> Bounds:
        if target.provider != OPENAI:
            raise APIError(
                400,
                f"The model '{name}' does not create embeddings: use an OpenAI embedding model "
                "as openai/<model>, e.g. openai/text-embedding-3-small.",
                param="model",
                code="model_not_supported",
            )
        return Bounds(prompt, 0)

    backends = backends_of(request)
    admission = await admit(backends, request, name, of)
    assert admission.target.upstream is not None
    model = admission.target.upstream
    forward = openai.forward_body(body, model.model, completion_cap=None, usage_in_stream=False)
    key = await provider_key(backends, admission)
    answer = await guarded(
        admission,
        backends.providers[OPENAI].post_json(
            "/embeddings",
            dump(forward),
            key,
            model=model.name,
            request_id=admission.request_id,
        ),
    )
    usage = as_dict(answer.get("usage"))
    account(admission, usage.get("prompt_tokens"), 0)
    answer["model"] = openai.public_model(answer.get("model"), model.model)
    await admission.settle("ok")
    return JSONResponse(answer, headers=admission.headers)
