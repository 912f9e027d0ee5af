"""Reading a request body: bounded in size, a JSON object, optionally validated by a schema."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from services.edge.errors import APIError, from_validation
from services.edge.limits import check_json, too_deep

_M = TypeVar("_M", bound=BaseModel)

# Far above any prompt that fits the hosted models' context (and OpenAI's own request limit for
# images), far below what could hurt the edge.
MAX_BODY_BYTES = 32 * 1024 * 1024


async def read_body(request: Request) -> bytes:
    """The raw body; 413 past MAX_BODY_BYTES, without holding more than that in memory."""
    size = 0
    chunks = []
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise APIError(
                413,
                f"The request body is larger than {MAX_BODY_BYTES} bytes.",
                code="request_too_large",
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def json_object(raw: bytes) -> dict[str, Any]:
    """`raw` as a JSON object within the limits of `services.edge.limits`; 400 when it is not
    one (NaN and Infinity, which Python's parser would take, are not JSON either)."""
    try:
        body = json.loads(raw, parse_constant=_not_json)
    except RecursionError:
        raise too_deep() from None
    except ValueError:  # JSONDecodeError, UnicodeDecodeError, an integer of too many digits
        raise APIError(400, "The request body is not valid JSON.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_json")
    check_json(body, raw)
    return body


async def read_json_object(request: Request) -> dict[str, Any]:
    return json_object(await read_body(request))


def validate(body: dict[str, Any], schema: type[_M]) -> _M:
    try:
        return schema.model_validate(body)
    except ValidationError as exc:
        raise from_validation(exc) from None


async def parse_body(request: Request, schema: type[_M]) -> _M:
    return validate(await read_json_object(request), schema)
