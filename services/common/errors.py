"""Domain errors shared by all services.

Each maps to exactly one gRPC status (in `grpc_server`) and, at the edge, to one HTTP status and
OpenAI error type. Domain code raises these; transports translate them in one place.
"""

from __future__ import annotations

import grpc


class SluiceError(Exception):
    """Base class. `code` is the OpenAI-style error code carried to the client (may be empty)."""

    grpc_status = grpc.StatusCode.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        code: str = "",
        param: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        # Extra trailing metadata for the caller, e.g. the x-ratelimit-* values of a refusal
        # (copied to HTTP headers by the edge) or the ids of a refused key (for the ledger).
        self.metadata = metadata or {}


class InvalidArgument(SluiceError):
    grpc_status = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(SluiceError):
    grpc_status = grpc.StatusCode.NOT_FOUND


class Unauthenticated(SluiceError):
    grpc_status = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(SluiceError):
    grpc_status = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(SluiceError):
    grpc_status = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(SluiceError):
    grpc_status = grpc.StatusCode.UNAVAILABLE


class AlreadyExists(SluiceError):
    grpc_status = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(SluiceError):
    grpc_status = grpc.StatusCode.FAILED_PRECONDITION
