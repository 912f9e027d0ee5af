"""How CLI commands call the running services: one unary gRPC call, failures as one line.

Commands talk to the services over gRPC rather than to the database, so the CLI sees exactly
what every other caller sees and needs no storage credentials.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from services.common.channels import sync_channel
from services.common.settings import Settings
from services.pb.auth.v1 import auth_pb2_grpc
from services.pb.metering.v1 import metering_pb2_grpc

T = TypeVar("T")
TIMEOUT_S = 10.0
# Substrings of grpc's own messages when nothing answers at the address (as opposed to a
# service that answered UNAVAILABLE itself, e.g. because its database is down).
_NO_CONNECTION = (
    "failed to connect", "connection refused", "dns resolution failed", "no healthy", "no ready"
)  # fmt: skip


class CommandFailed(Exception):
    """A call failed; `str()` is the one line to show the user."""


def call(
    addr: str,
    service: str,
    method: Callable[[grpc.Channel], Callable[..., T]],
    request: Any,
) -> T:
    """Calls `method(channel)(request)` on the service at `addr` with a deadline.

    `service` names it in messages ("auth", "metering"). Raises `CommandFailed`.
    """
    with sync_channel(addr) as channel:
        try:
            return method(channel)(request, timeout=TIMEOUT_S)
        except grpc.RpcError as exc:
            raise CommandFailed(_describe(exc, service, addr)) from None


def auth(settings: Settings, method: str, request: Any, *, redact: str = "") -> Any:
    """Calls AuthService `method` (e.g. "CreateKey"); `redact` is a secret that must never
    appear in an error message, even if the service were to echo it."""
    try:
        return call(
            settings.auth_addr,
            "auth",
            lambda ch: getattr(auth_pb2_grpc.AuthServiceStub(ch), method),
            request,
        )
    except CommandFailed as exc:
        if redact and redact in str(exc):
            raise CommandFailed(str(exc).replace(redact, "[redacted]")) from None
        raise


def metering(settings: Settings, method: str, request: Any) -> Any:
    """Calls MeteringService `method` (e.g. "QueryUsage")."""
    return call(
        settings.metering_addr,
        "metering",
        lambda ch: getattr(metering_pb2_grpc.MeteringServiceStub(ch), method),
        request,
    )


def _describe(exc: grpc.RpcError, service: str, addr: str) -> str:
    code = exc.code()  # type: ignore[attr-defined]
    details = exc.details() or ""  # type: ignore[attr-defined]
    unreachable = f"{service} service not reachable at {addr} — start the stack with `sluice up`"
    if code == grpc.StatusCode.UNAVAILABLE and any(s in details.lower() for s in _NO_CONNECTION):
        return unreachable
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"{unreachable} (no answer within {TIMEOUT_S:.0f}s)"
    return f"{service} service: {details or code.name.lower()}"
