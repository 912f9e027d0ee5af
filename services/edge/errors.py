"""The edge's one error boundary: every failure becomes its API's error JSON with the right status.

Internal services report failures as gRPC statuses (plus an OpenAI-style code in trailing
metadata); `from_grpc` turns them into `APIError`s, and `error_response` renders any `APIError`
in OpenAI's shape, or in Anthropic's on the Anthropic Messages routes, whose SDK parses that one.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from pydantic import ValidationError
from starlette.responses import JSONResponse

from services.common.grpc_server import (
    ERROR_CODE_KEY,
    ERROR_PARAM_KEY,
    HTTP_STATUS_KEY,
    RETRY_AFTER_KEY,
    chosen_by_service,
)

log = logging.getLogger(__name__)

# gRPC status -> (HTTP status, OpenAI error type). The official SDK raises a distinct exception
# class per HTTP status, so these statuses are part of our API.
_GRPC_TO_HTTP: dict[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid_request_error"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "invalid_request_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_denied"),
    grpc.StatusCode.NOT_FOUND: (404, "invalid_request_error"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "invalid_request_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_exceeded"),
    grpc.StatusCode.CANCELLED: (499, "cancelled"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable"),
}


# Statuses gRPC reports itself about reaching a service, each with its own meaning to the client.
_TRANSPORT_STATUSES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)

# HTTP status -> Anthropic error type, as the Messages API names them.
_ANTHROPIC_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}


class UnsupportedField(ValueError):
    """A known field whose value Sluice cannot honour; reported as a 400 naming the field."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


class APIError(Exception):
    """An error the client sees, in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def anthropic_body(self) -> dict[str, Any]:
        """The error in the Anthropic Messages API's shape."""
        default = "invalid_request_error" if self.status < 500 else "api_error"
        err_type = _ANTHROPIC_TYPES.get(self.status, default)
        return {"type": "error", "error": {"type": err_type, "message": self.message}}


def error_response(exc: APIError, *, anthropic: bool = False) -> JSONResponse:
    body = exc.anthropic_body() if anthropic else exc.body()
    return JSONResponse(body, status_code=exc.status, headers=exc.headers)


def is_anthropic_route(path: str) -> bool:
    """Whether `path` is one of the Anthropic Messages API's routes (Anthropic's error shape)."""
    return path == "/v1/messages" or path.startswith("/v1/messages/")


def _union_tag(part: Any) -> bool:
    """Whether a location part names a union member or validator (`NamedToolChoice`,
    `literal['none','auto']`, `function-after[...]`) rather than a field."""
    return isinstance(part, str) and (part[:1].isupper() or any(c in part for c in "[]'(-"))


def field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    """A validation location as OpenAI names parameters: `messages[0].content[1].type`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def from_validation(exc: ValidationError) -> APIError:
    """The first validation problem, as a 400 naming the offending parameter."""
    err = exc.errors()[0]
    loc = [p for p in err.get("loc", ()) if not _union_tag(p)]
    where = field_path(loc)
    original = (err.get("ctx") or {}).get("error")
    if isinstance(original, UnsupportedField):
        # A nested validator names its field relative to where it stands.
        named = original.param
        if where:
            named = where + named if named.startswith("[") else f"{where}.{named}"
        return APIError(400, original.message, param=named, code="unsupported_parameter")
    param: str | None = where or None
    msg = err.get("msg", "invalid request")
    if err.get("type") == "missing":
        return APIError(
            400,
            f"Missing required parameter: '{param}'.",
            param=param,
            code="missing_required_parameter",
        )
    if err.get("type") == "extra_forbidden":
        return APIError(
            400,
            f"Unrecognized request argument supplied: {param}",
            param=param,
            code="unknown_parameter",
        )
    return APIError(400, f"Invalid value for '{param}': {msg}", param=param, code="invalid_value")


def from_grpc(exc: grpc.aio.AioRpcError, service: str) -> APIError:
    if not chosen_by_service(exc) and exc.code() not in _TRANSPORT_STATUSES:
        # No service chose this status: gRPC did (a message over its limits, a broken stream),
        # and its text describes our internals, not the client's request.
        log.warning("%s call failed in gRPC: %s %s", service, exc.code().name, exc.details())
        msg = f"The {service} service had an internal error."
        return APIError(500, msg, type="server_error")
    status, err_type = _GRPC_TO_HTTP.get(exc.code(), (500, "server_error"))
    trailing = dict(exc.trailing_metadata() or ())
    code = trailing.get(ERROR_CODE_KEY) or None
    param = trailing.get(ERROR_PARAM_KEY) or None
    message = exc.details() or f"{service} failed"
    headers: dict[str, str] = {
        str(k): str(v) for k, v in trailing.items() if str(k).startswith("x-ratelimit-")
    }
    if retry := trailing.get(RETRY_AFTER_KEY):
        headers["retry-after"] = str(retry)
    if http_status := trailing.get(HTTP_STATUS_KEY):
        # The service chose the status itself (e.g. an upstream provider's failure, which must
        # not read as a fault of the client's key): keep its message.
        status = int(http_status)
        if status >= 500:
            err_type = "upstream_error" if code and code.startswith("upstream") else "server_error"
    elif exc.code() == grpc.StatusCode.UNAVAILABLE:
        # A dependency is down: fail closed with a clear message rather than serve ungoverned.
        message = f"The {service} service is unavailable; try again shortly."
        headers.setdefault("retry-after", "1")
    elif status == 500:
        message = f"The {service} service had an internal error."
    if exc.code() == grpc.StatusCode.UNAUTHENTICATED and code is None:
        code = "invalid_api_key"
    if exc.code() == grpc.StatusCode.NOT_FOUND and code is None:
        code = "model_not_found" if service == "engine" else "not_found"
    if status == 429 and code == "insufficient_quota":
        err_type = "insufficient_quota"
    return APIError(status, message, type=err_type, code=code, param=param, headers=headers)
