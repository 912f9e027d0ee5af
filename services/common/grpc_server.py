"""Running a gRPC service: one error boundary, health checking, a drain on SIGTERM, traces.

Every service's `main()` builds its servicers and calls `serve()`. Domain code raises
`SluiceError`s; `ErrorInterceptor` is the single place they become gRPC statuses, with the
OpenAI-style `code` and `param` carried in trailing metadata so the edge can show them. With
tracing on, every call also gets a server span continuing its caller's trace
(`services.common.tracing.ServerTracing`, outside the error boundary so it sees the final status).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common.errors import SluiceError
from services.common.tracing import Tracing

log = logging.getLogger(__name__)

ERROR_CODE_KEY = "sluice-error-code"
ERROR_PARAM_KEY = "sluice-error-param"
RETRY_AFTER_KEY = "sluice-retry-after"
# Set by a service that knows which HTTP status the client should see (an upstream provider's
# failure, for one); the edge uses it instead of its gRPC-to-HTTP table.
HTTP_STATUS_KEY = "sluice-http-status"
GRACE_S = 5.0
MAX_CONNECTION_AGE_MS = 5 * 60 * 1000


def chosen_by_service(exc: grpc.aio.AioRpcError) -> bool:
    """Whether a service chose this status (`_abort` marks every one), rather than gRPC itself:
    a transport failure, a message over its size limits."""
    return ERROR_CODE_KEY in dict(exc.trailing_metadata() or ())


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
    """The status, details and trailing metadata the error boundary gives an exception: a
    `SluiceError`'s own, with its code (always present, empty or not: see chosen_by_service),
    param, retry-after and metadata; anything else INTERNAL with no text of its own."""
    if not isinstance(exc, SluiceError):
        return grpc.StatusCode.INTERNAL, "internal error", ()
    metadata: list[tuple[str, str]] = [(ERROR_CODE_KEY, exc.code)]
    if exc.param:
        metadata.append((ERROR_PARAM_KEY, exc.param))
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        metadata.append((RETRY_AFTER_KEY, str(retry_after)))
    metadata.extend(exc.metadata.items())
    return exc.grpc_status, exc.message, tuple(metadata)


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    code, details, metadata = status_of(exc)
    if not isinstance(exc, SluiceError):
        log.exception("unhandled error in RPC", exc_info=exc)
    context.set_trailing_metadata(metadata)
    await context.abort(code, details)


def _wrap_unary(behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await behavior(request, context)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:  # noqa: BLE001 - this is the boundary
            await _abort(context, exc)

    return wrapper


def _wrap_stream(behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for item in behavior(request, context):
                yield item
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:  # noqa: BLE001 - this is the boundary
            await _abort(context, exc)

    return wrapper


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps domain exceptions to gRPC status codes for every method of the server."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            # A streaming handler either yields its messages or writes them with
            # context.write() (grpc_health's Watch does) and returns a coroutine.
            behavior = handler.unary_stream
            wrap = _wrap_stream if inspect.isasyncgenfunction(behavior) else _wrap_unary
            return grpc.unary_stream_rpc_method_handler(
                wrap(behavior),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


@dataclass
class RunningServer:
    """A started server, its health servicer and the port it is bound to."""

    server: grpc.aio.Server
    health: health.aio.HealthServicer
    port: int


async def start_server(
    addr: str,
    register: Callable[[grpc.aio.Server], None],
    service_names: Sequence[str],
    tracing: Tracing | None = None,
) -> RunningServer:
    """Builds, binds and starts a server reporting SERVING; `serve()` and in-process tests use it.

    `addr` may end in `:0`; the bound port is returned in `RunningServer.port`.
    """
    traced = tracing.server_interceptors() if tracing is not None else []
    server = grpc.aio.server(
        interceptors=[*traced, ErrorInterceptor()],
        options=[
            ("grpc.max_send_message_length", 16 * 1024 * 1024),
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            # Clients reconnect, and so resolve DNS names again, at least this often: a caller
            # dialling dns:/// finds replicas added since (gRPC re-resolves only on a lost
            # connection). Calls in flight finish on the old connection.
            ("grpc.max_connection_age_ms", MAX_CONNECTION_AGE_MS),
        ],
    )
    register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(addr)
    if port == 0:
        raise RuntimeError(f"cannot bind {addr}")
    await server.start()
    for name in (*service_names, ""):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server=server, health=health_servicer, port=port)


async def stop_server(
    running: RunningServer,
    grace_s: float = GRACE_S,
    delay_s: float = 0,
    on_drain: Callable[[], None] | None = None,
) -> None:
    """Drains: reports NOT_SERVING, keeps serving `delay_s` seconds more so that clients
    watching health (and balancers probing it) move new calls elsewhere, then calls `on_drain`
    (a service ends its long-lived streams there), refuses new calls and gives those in flight,
    streams included, `grace_s` seconds to finish before cancelling them."""
    await running.health.enter_graceful_shutdown()
    if delay_s > 0:
        await asyncio.sleep(delay_s)
    if on_drain is not None:
        on_drain()
    await running.server.stop(grace_s)


async def serve(
    addr: str,
    register: Callable[[grpc.aio.Server], None],
    service_names: Sequence[str],
    *,
    on_stop: Callable[[], Awaitable[None]] | None = None,
    on_drain: Callable[[], None] | None = None,
    grace_s: float = GRACE_S,
    delay_s: float = 0,
    tracing: Tracing | None = None,
) -> None:
    """Serves until SIGINT/SIGTERM, then drains (`stop_server`, with `on_drain`) and calls
    `on_stop`.

    A second signal during the drain is ignored: the grace period is the bound.
    """
    running = await start_server(addr, register, service_names, tracing)
    log.info("serving %s on %s", ", ".join(service_names), addr)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info(
        "draining %s (NOT_SERVING for %.1fs, then %.0fs for calls in flight)",
        ", ".join(service_names),
        delay_s,
        grace_s,
    )
    await stop_server(running, grace_s, delay_s, on_drain)
    log.info("stopped %s", ", ".join(service_names))
    if on_stop is not None:
        await on_stop()


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def run_service(main: Coroutine[Any, Any, None]) -> None:
    """Runs a service's main coroutine on uvloop where it is installed (every Linux install):
    its loop costs less per gRPC message and per socket event than asyncio's own."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)
