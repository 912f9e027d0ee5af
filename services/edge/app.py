"""The edge application factory: routes, the error table, the backend clients' lifespan and,
with tracing on, a server span per request (services.edge.traces)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.settings import Settings
from services.common.tracing import Tracing
from services.edge.backends import Backends
from services.edge.drain import Drain
from services.edge.errors import APIError, error_response, is_anthropic_route
from services.edge.routes import ROUTES
from services.edge.traces import HTTPTracing

log = logging.getLogger(__name__)

# Far above what the SDKs send (a key, a few dozen headers), well below what could hurt the edge.
MAX_HEADER_BYTES = 64 * 1024


def _render(request: Request, exc: APIError) -> Response:
    """In the error shape of the route's API (Anthropic's on its Messages routes)."""
    return error_response(exc, anthropic=is_anthropic_route(request.url.path))


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return _render(request, exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        msg = f"Unknown request URL: {request.method} {request.url.path}."
        return _render(request, APIError(404, msg, code="unknown_url"))
    if exc.status_code == 405:
        msg = f"Method {request.method} is not allowed for {request.url.path}."
        return _render(request, APIError(405, msg, code="method_not_allowed"))
    return _render(request, APIError(exc.status_code, str(exc.detail)))


class Boundary:
    """The outermost layer of every HTTP request.

    Refuses headers over MAX_HEADER_BYTES in all (431), before any route reads them. Answers an
    exception that no handler took with a 500 in the route's error shape, and keeps the
    connection: Starlette's own last handler re-raises after answering, and the server then
    drops the keep-alive connection that the client's next request would use. When the response
    had already begun there is nothing left to answer; the failure is logged."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if sum(len(k) + len(v) for k, v in scope["headers"]) > MAX_HEADER_BYTES:
            msg = f"The request's headers are larger than {MAX_HEADER_BYTES} bytes in all."
            error = APIError(431, msg, code="request_header_fields_too_large")
            await _render(Request(scope), error)(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:  # noqa: BLE001 - this is the boundary
            request = Request(scope)
            log.exception("unhandled error on %s", request.url.path, exc_info=exc)
            if started:
                return
            error = APIError(
                500, "The server had an error while processing your request.", type="server_error"
            )
            await _render(request, error)(scope, receive, send)


def create_app(
    settings: Settings, drain: Drain | None = None, tracing: Tracing | None = None
) -> Starlette:
    """The edge; `drain` is the server's (services.edge.drain), started on SIGTERM; `tracing`
    the process's (services.common.tracing), off when None."""
    tracing = tracing or Tracing()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.backends = Backends(settings, drain=drain or Drain(), tracing=tracing)
        try:
            await app.state.backends.start()
            yield
        finally:
            await app.state.backends.close()

    return Starlette(
        routes=ROUTES,
        lifespan=lifespan,
        middleware=[
            Middleware(Boundary),
            *([Middleware(HTTPTracing, tracing=tracing)] if tracing.enabled else []),
        ],
        exception_handlers={APIError: _api_error, HTTPException: _http_error},
    )
