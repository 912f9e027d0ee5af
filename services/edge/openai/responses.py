"""`POST /v1/responses`, `GET /v1/responses/{id}` and `DELETE /v1/responses/{id}`: OpenAI's
Responses API for every model, governed and metered like chat (the ledger records the endpoint
`/v1/responses`).

- `openai/<model>`: passed to the provider as sent (`responses_upstream`).
- hosted models and `anthropic/<model>`: translated onto the chat path that serves them
  (`responses_translate`, `responses_events`) and run by its own functions (`hosted.run`,
  `upstream_chat.run_anthropic`), with Sluice keeping the conversation state
  (`responses_store`): `store` (default true) keeps the response for the organization;
  `previous_response_id` continues a stored one, its conversation prepended to the input and
  counted in the reservation like the rest of the input.

GET and DELETE authenticate the key (its address rules included) and act only within its
organization; they cost no tokens and leave no usage record. A stored response is written
before its client sees the response's end, so a follow-up can name it at once.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from services.edge.backends import Backends, backends_of
from services.edge.body import json_object, read_body, validate
from services.edge.errors import APIError
from services.edge.governance import Admission, admit, authenticate
from services.edge.openai import (
    hosted,
    responses_objects,
    responses_store,
    responses_translate,
    responses_upstream,
    upstream_chat,
)
from services.edge.openai.answers import ChatAnswer, is_error
from services.edge.openai.chat import model_name
from services.edge.openai.protocol import ChatCompletionRequest, ChatMessage
from services.edge.openai.responses_events import Event, ResponseStream
from services.edge.openai.responses_translate import ChatPlan, in_responses_terms
from services.edge.providers.base import dump
from services.edge.providers.catalog import ANTHROPIC, OPENAI, is_upstream, parse
from services.edge.upstream import SSE_HEADERS

T = TypeVar("T")


def _translated_errors(step: Callable[[], T]) -> T:
    """`step()`, with its 400s naming the client's Responses parameters."""
    try:
        return step()
    except APIError as exc:
        raise in_responses_terms(exc) from None


def hosted_request(plan: ChatPlan) -> ChatCompletionRequest:
    """The translated request as the hosted chat path validates it. That path ignores fields it
    does not know, so anything the translation produced that it does not declare is refused
    here, naming the Responses field, instead of being dropped."""
    chat = plan.chat
    request = _translated_errors(lambda: validate(chat, ChatCompletionRequest))
    for name in chat:
        if name not in ChatCompletionRequest.model_fields:
            param = responses_translate.responses_param(name)
            raise responses_translate.unsupported(
                param or name, f"{param} is not supported by this model."
            )
    for message in chat["messages"]:
        for name in message:
            if name not in ChatMessage.model_fields:
                raise responses_translate.unsupported(
                    "input", f"This model does not take input items that need '{name}'."
                )
    return request


async def create(request: Request) -> Response:
    raw = await read_body(request)
    body = json_object(raw)
    name = model_name(body)
    backends = backends_of(request)
    if is_upstream(name) and parse(name).provider == OPENAI:
        return await responses_upstream.create(backends, request, body, raw, parse(name))
    responses_translate.check_request(body)
    principal = await authenticate(backends, request, name)
    history = await responses_store.conversation(
        backends, principal.org_id, body.get("previous_response_id")
    )
    plan = responses_translate.to_chat(body, history)
    store = body.get("store") is not False
    if store:
        responses_store.check_size(history, plan.input_items)
    stream = bool(body.get("stream"))
    if is_upstream(name):
        model = parse(name)
        assert model.provider == ANTHROPIC
        call = _translated_errors(lambda: upstream_chat.anthropic_call(backends, plan.chat, model))
        size = len(dump(plan.chat))
        admission = await admit(
            backends,
            request,
            name,
            upstream_chat.chat_bounds(plan.chat, size, backends, completion=call.sent),
            principal=principal,
        )
        answer = await upstream_chat.run_anthropic(
            backends, admission, call, stream=stream, include_usage=True
        )
    else:
        shape = hosted.ChatShape(hosted_request(plan))
        admission = await admit(backends, request, name, shape.bounds, principal=principal)
        answer = await hosted.run(backends, shape, admission)
    turn = _Turn(backends, admission, body, plan, history, store)
    if answer.completion is not None:
        return await turn.whole(answer.completion)
    assert answer.chunks is not None
    return StreamingResponse(
        turn.events(answer),
        media_type="text/event-stream",
        headers={**SSE_HEADERS, **admission.headers},
    )


class _Turn:
    """One admitted request's answer as a response object or its events, stored on the way."""

    def __init__(
        self,
        backends: Backends,
        admission: Admission,
        body: dict[str, Any],
        plan: ChatPlan,
        history: list[dict[str, Any]],
        store: bool,
    ) -> None:
        self.backends = backends
        self.admission = admission
        self.body = body
        self.plan = plan
        self.history = history
        self.store = store
        self.response_id = responses_store.new_response_id()
        self.created_at = int(time.time())

    async def _keep(self, response: dict[str, Any]) -> None:
        if self.store:
            await responses_store.put(
                self.backends, self.admission, response, self.plan.input_items, self.history
            )

    async def whole(self, completion: dict[str, Any]) -> Response:
        response = responses_objects.completion_to_response(
            completion, self.body, response_id=self.response_id, created_at=self.created_at
        )
        await self._keep(response)
        return JSONResponse(response, headers=self.admission.headers)

    async def events(self, answer: ChatAnswer) -> AsyncIterator[bytes]:
        chunks = answer.chunks
        assert chunks is not None
        skeleton = responses_objects.response_object(
            self.body,
            response_id=self.response_id,
            created_at=self.created_at,
            model=self.admission.target.public_name,
            status="in_progress",
            output=[],
            usage=None,
        )
        stream = ResponseStream(skeleton)
        for event in stream.start():
            yield sse(event)
        async with aclosing(chunks):
            async for chunk in chunks:
                if is_error(chunk):
                    for event in stream.fail(chunk["error"]):
                        yield sse(event)
                    return
                for event in stream.feed(chunk):
                    yield sse(event)
        # The chat path settled before its last chunk; the response is kept before its end.
        events, response = stream.finish()
        await self._keep(response)
        for event in events:
            yield sse(event)


def sse(event: Event) -> bytes:
    """One Responses event on the wire: named by its type, as OpenAI sends them."""
    return f"event: {event['type']}\n".encode() + b"data: " + dump(event) + b"\n\n"


def _response_id(request: Request) -> str:
    response_id = str(request.path_params["response_id"])
    if not response_id.startswith("resp_"):
        raise APIError(
            400,
            f"Invalid response id '{response_id}': expected an id that begins with 'resp_'.",
            param="response_id",
            code="invalid_value",
        )
    return response_id


def _plain_get(request: Request) -> None:
    """GET options that only a streamed or expanded read would honour are refused by name."""
    for name in request.query_params:
        if name == "stream" and request.query_params[name].lower() in ("false", "0", ""):
            continue
        raise APIError(
            400,
            f"The query parameter '{name}' is not supported when reading a response here.",
            param=name,
            code="unsupported_parameter",
        )


async def retrieve(request: Request) -> Response:
    response_id = _response_id(request)
    backends = backends_of(request)
    _plain_get(request)
    principal = await authenticate(backends, request, "")
    if responses_store.is_ours(response_id):
        response = await responses_store.get(backends, principal.org_id, response_id)
        return JSONResponse(response)
    answer = await responses_upstream.stored(backends, principal.org_id, "GET", response_id)
    model = str(answer.get("model") or "")
    return JSONResponse(responses_upstream.public_response(answer, model))


async def delete(request: Request) -> Response:
    response_id = _response_id(request)
    backends = backends_of(request)
    principal = await authenticate(backends, request, "")
    if responses_store.is_ours(response_id):
        await responses_store.delete(backends, principal.org_id, response_id)
        return JSONResponse({"id": response_id, "object": "response", "deleted": True})
    answer = await responses_upstream.stored(backends, principal.org_id, "DELETE", response_id)
    return JSONResponse(answer)
