"""The Responses API for `openai/<model>`: the body passed to the provider's `/v1/responses` as
sent, its answer and its event stream relayed, and its stored responses reached by id.

The only edits are those of `providers.openai.forward_responses_body` (the provider's model
name; `max_output_tokens` lowered under a plan's cap) and, in what comes back, `model` shown as
`openai/<model>` in every response object. Everything else, `store`, `previous_response_id`,
built-in tools, `background` and fields Sluice has never heard of included, is the provider's to
decide. Events are relayed as they arrive, unchanged but for that model name; the terminal one
(`response.completed`, `.incomplete` or `.failed`) goes out after settlement, with the provider's
usage (`input_tokens`, `output_tokens`) on the ledger. The provider keeps the conversation
state, so an id that is Sluice's own (`responses_store`) is refused as a previous_response_id
here. GET and DELETE of the provider's ids use the organization's OpenAI credential.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from services.edge.backends import Backends
from services.edge.errors import APIError
from services.edge.governance import Bounds, admit
from services.edge.openai import bounds, responses_store
from services.edge.providers import openai
from services.edge.providers.base import SSEEvent, UpstreamFailure, as_dict, dump, load_event
from services.edge.providers.catalog import OPENAI, UpstreamModel
from services.edge.providers.credentials import NoCredential
from services.edge.relay import relay
from services.edge.targets import Target
from services.edge.upstream import SSE_HEADERS, account, guarded, provider_key

# Events that carry the whole response object (whose `model` is renamed).
LIFECYCLE = frozenset(
    {
        "response.created",
        "response.queued",
        "response.in_progress",
        "response.completed",
        "response.incomplete",
        "response.failed",
    }
)
TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})


def responses_bounds(
    body: dict[str, Any], raw_size: int, backends: Backends
) -> Callable[[Target], Bounds]:
    def of(target: Target) -> Bounds:
        info = target.info
        assert target.upstream is not None
        images = backends.catalog.image_tokens(target.upstream)
        prompt = bounds.responses_prompt_bound(body, raw_size, images)
        limit = body.get("max_output_tokens") or info.default_max_tokens or info.context_length
        return Bounds(info.context_length if prompt is None else prompt, int(limit))

    return of


def public_response(response: dict[str, Any], model: str) -> dict[str, Any]:
    """A provider's response object as Sluice shows it: `model` as `openai/<model>`."""
    if "model" in response:
        response["model"] = openai.public_model(response.get("model"), model)
    return response


def _usage(response: Any) -> tuple[int, int] | None:
    usage = as_dict(response).get("usage")
    if not isinstance(usage, dict):
        return None
    return int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0)


async def create(
    backends: Backends, request: Request, body: dict[str, Any], raw: bytes, model: UpstreamModel
) -> Response:
    bounds.check_responses_body(body)
    previous = body.get("previous_response_id")
    if isinstance(previous, str) and responses_store.is_ours(previous):
        raise responses_store.previous_not_found(
            previous,
            " It was stored by Sluice for a hosted or Anthropic model; OpenAI's models "
            "continue only OpenAI's responses (or send the whole input instead).",
        )
    wanted = responses_bounds(body, len(raw), backends)
    admission = await admit(backends, request, model.name, wanted)
    forward = openai.forward_responses_body(
        body, model.model, completion_cap=admission.completion_cap(None)
    )
    key = await provider_key(backends, admission)
    provider = backends.providers[OPENAI]
    rid = admission.request_id
    if not body.get("stream"):
        answer = await guarded(
            admission,
            provider.post_json("/responses", dump(forward), key, model=model.name, request_id=rid),
        )
        account(admission, *(_usage(answer) or (0, 0)))
        await admission.settle("ok")
        return JSONResponse(public_response(answer, model.model), headers=admission.headers)
    stream = await guarded(
        admission,
        provider.post_stream("/responses", dump(forward), key, model=model.name, request_id=rid),
    )
    return StreamingResponse(
        relay(admission, stream, ResponsesCodec(model.model), model.provider),
        media_type="text/event-stream",
        headers={**SSE_HEADERS, **admission.headers},
    )


async def stored(
    backends: Backends, org_id: str, method: str, response_id: str, suffix: str = ""
) -> dict[str, Any]:
    """GET or DELETE of one of the organization's responses kept by OpenAI (`suffix` e.g.
    "/input_items"); 404 when the organization has no OpenAI credential or OpenAI has no
    such response."""
    try:
        key = await backends.credentials.api_key(org_id, OPENAI)
    except NoCredential:
        raise responses_store.not_found(response_id) from None
    path = f"/responses/{response_id}{suffix}"
    try:
        answer = await backends.providers[OPENAI].call_json(
            method,
            path,
            None,
            key,
            model=OPENAI,
            request_id=f"req-{uuid.uuid4().hex}",
        )
    except APIError as exc:
        if exc.status == 404:
            raise responses_store.not_found(response_id) from None
        raise
    return answer


@dataclass
class ResponsesCodec:
    """A Responses API event stream relayed event by event (see the module doc)."""

    model: str
    finished: bool = False
    prompt: int = 0
    completion: int | None = None
    pieces: int = 0
    sequence: int = -1
    # A response has a status, not per-choice finish reasons: none are recorded.
    finish_reasons: list[str] = field(default_factory=list)
    _end: list[bytes] = field(default_factory=list)

    def frames(self, event: SSEEvent) -> list[bytes]:
        obj = load_event(event.data)
        kind = str(obj.get("type") or event.event)
        if kind == "error":
            raise UpstreamFailure(
                "stream", str(obj.get("message") or "error event"), code=str(obj.get("code") or "")
            )
        # The last number the client saw: an error event that ends the stream takes the next.
        if isinstance(obj.get("sequence_number"), int):
            self.sequence = obj["sequence_number"]
        data = event.data.encode()
        if kind in LIFECYCLE and isinstance(obj.get("response"), dict):
            response = public_response(obj["response"], self.model)
            if (usage := _usage(response)) is not None:
                self.prompt, self.completion = usage
            data = dump(obj)
        elif kind.endswith(".delta"):
            self.pieces += 1
        frame = f"event: {event.event or kind}\n".encode() + b"data: " + data + b"\n\n"
        if kind in TERMINAL:
            self.finished = True
            self._end = [frame]
            return []
        return [frame]

    def closing(self) -> list[bytes]:
        return self._end

    def usage(self) -> tuple[int, int]:
        return self.prompt, self.pieces if self.completion is None else self.completion

    def error_frame(self, error: APIError) -> bytes:
        self.sequence += 1
        event = {
            "type": "error",
            "sequence_number": self.sequence,
            "code": error.code,
            "message": error.message,
            "param": error.param,
        }
        return b"event: error\ndata: " + dump(event) + b"\n\n"
