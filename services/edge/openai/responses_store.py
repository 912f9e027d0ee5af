"""Sluice's own stored responses, through metering's `ResponseStoreService`: their ids, the
conversation a `previous_response_id` continues, and GET / DELETE by id.

Which store an id belongs to is decided by its form alone: Sluice names the responses it
stores `resp_sluice_<32 hex>` (OpenAI's are `resp_` and hex), so that an id is sent to OpenAI
only when it is not one of ours and ours are looked up only in metering, under the caller's
organization, with no provider call. The responses of `openai/<model>` are kept by OpenAI and
their ids passed through (`services.edge.openai.responses_upstream`).

A stored response holds the response object as its client saw it, this request's input items,
and the conversation through it (the previous one's, then this input, then this output), so a
follow-up reads one row whatever the length of the chain. Metering keeps it for
SLUICE_RESPONSES_RETENTION_S and never shows it to another organization.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from typing import Any

import grpc

from services.edge.backends import CONTROL_TIMEOUT_S, Backends
from services.edge.errors import APIError, from_grpc
from services.edge.governance import Admission
from services.edge.providers.base import dump
from services.pb.metering.v1 import metering_pb2

log = logging.getLogger(__name__)

PREFIX = "resp_sluice_"
# What a request may ask to store: below metering's own limit (12 MiB), leaving room for the
# output, which is bounded by the completion's tokens.
MAX_STORED_INPUT_BYTES = 8 * 1024 * 1024
PUT_ATTEMPTS = 3


def new_response_id() -> str:
    return PREFIX + secrets.token_hex(16)


def is_ours(response_id: str) -> bool:
    return response_id.startswith(PREFIX)


def not_found(response_id: str) -> APIError:
    return APIError(404, f"Response with id '{response_id}' not found.", code="not_found")


def previous_not_found(response_id: str, why: str = "") -> APIError:
    return APIError(
        400,
        f"Previous response with id '{response_id}' not found.{why}",
        param="previous_response_id",
        code="previous_response_not_found",
    )


async def _get(
    backends: Backends, org_id: str, response_id: str, include_items: bool
) -> metering_pb2.StoredResponse | None:
    try:
        stored: metering_pb2.StoredResponse = await backends.responses.GetResponse(
            metering_pb2.GetResponseRequest(
                org_id=org_id, response_id=response_id, include_items=include_items
            ),
            timeout=CONTROL_TIMEOUT_S,
        )
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise from_grpc(exc, "metering") from None
    return stored


async def conversation(
    backends: Backends, org_id: str, previous_id: str | None
) -> list[dict[str, Any]]:
    """The items a request continuing `previous_id` comes after ([] when it names none)."""
    if not previous_id:
        return []
    if not is_ours(previous_id):
        raise previous_not_found(
            previous_id,
            " Only responses stored by Sluice (hosted and Anthropic models) continue here; "
            "those of openai/<model> continue on openai/<model>.",
        )
    stored = await _get(backends, org_id, previous_id, include_items=True)
    if stored is None:
        raise previous_not_found(previous_id)
    items: list[dict[str, Any]] = json.loads(stored.conversation_json or "[]")
    return items


def check_size(history: list[dict[str, Any]], items: list[dict[str, Any]]) -> None:
    """A 400 up front for a conversation too large to store (rather than an answer that could
    not be continued)."""
    size = len(dump(history)) + len(dump(items))
    if size > MAX_STORED_INPUT_BYTES:
        raise APIError(
            400,
            f"The conversation is too large to store ({size} bytes; at most "
            f"{MAX_STORED_INPUT_BYTES}). Send store: false with the whole input instead.",
            param="store",
            code="invalid_value",
        )


async def put(
    backends: Backends,
    admission: Admission,
    response: dict[str, Any],
    items: list[dict[str, Any]],
    history: list[dict[str, Any]],
) -> None:
    """Stores `response` before its client sees its end, so that a follow-up finds it. The
    answer is already billed: when metering cannot take it after a few tries, the client still
    gets its answer and the failure is logged (a follow-up naming it is then a 400)."""
    principal = admission.principal
    stored = metering_pb2.StoredResponse(
        org_id=principal.org_id,
        response_id=str(response["id"]),
        project_id=principal.project_id,
        key_id=principal.key_id,
        model=str(response.get("model") or ""),
        response_json=dump(response).decode(),
        input_items_json=dump(items).decode(),
        conversation_json=dump([*history, *items, *response.get("output", [])]).decode(),
    )
    request = metering_pb2.PutResponseRequest(response=stored)
    for attempt in range(PUT_ATTEMPTS):
        try:
            await backends.responses.PutResponse(request, timeout=CONTROL_TIMEOUT_S)
            return
        except grpc.aio.AioRpcError as exc:
            log.warning(
                "storing response %s failed (%s), attempt %d",
                stored.response_id,
                exc.code(),
                attempt + 1,
            )
            if exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ALREADY_EXISTS):
                break
            await asyncio.sleep(0.2 * 2**attempt)
    log.error("response %s of request %s was not stored", stored.response_id, admission.request_id)


async def get(backends: Backends, org_id: str, response_id: str) -> dict[str, Any]:
    """The organization's stored response object; 404 for any other organization's."""
    stored = await _get(backends, org_id, response_id, include_items=False)
    if stored is None:
        raise not_found(response_id)
    response: dict[str, Any] = json.loads(stored.response_json)
    return response


async def delete(backends: Backends, org_id: str, response_id: str) -> None:
    try:
        await backends.responses.DeleteResponse(
            metering_pb2.DeleteResponseRequest(org_id=org_id, response_id=response_id),
            timeout=CONTROL_TIMEOUT_S,
        )
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            raise not_found(response_id) from None
        raise from_grpc(exc, "metering") from None
