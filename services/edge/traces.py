"""The edge's server span per HTTP request, continuing the client's `traceparent` (W3C trace
context) or starting a trace; every span of the request's governance and generation is its
child (services.edge.governance), and so, through gRPC metadata, are the spans of auth,
metering and the engine.

Installed by the app factory only when tracing is on. Probes (`/healthz`, `/readyz`,
`/metrics`) are not traced. Only the method, the route, the path, the status and the peer's
address are recorded: never a header (keys travel in them), a query string or a body.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common import tracing
from services.common.tracing import Tracing

UNTRACED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_TRACE_HEADERS = frozenset(h.encode() for h in tracing.TRACE_HEADERS)


class HTTPTracing:
    """ASGI middleware: one SERVER span per HTTP request, named `METHOD /route/{template}`."""

    def __init__(self, app: ASGIApp, tracing: Tracing) -> None:
        self.app = app
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNTRACED_PATHS:
            await self.app(scope, receive, send)
            return
        carrier = {
            name.decode(): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in _TRACE_HEADERS
        }
        method = scope["method"]
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "url.path": scope["path"],
            "url.scheme": scope.get("scheme", "http"),
        }
        if client := scope.get("client"):
            attributes["network.peer.address"] = client[0]
        span = self.tracing.start(
            method,
            kind=SpanKind.SERVER,
            attributes=attributes,
            context=tracing.extract(carrier) if carrier else None,
        )
        status = 0

        async def send_traced(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                span.set_attribute("http.response.status_code", status)
            await send(message)

        failure: BaseException | None = None
        try:
            with tracing.use(span):
                await self.app(scope, receive, send_traced)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            # The router filled in the matched route by now (Starlette's scope["route"]).
            template = getattr(scope.get("route"), "path", None)
            if isinstance(template, str):
                span.update_name(f"{method} {template}")
                span.set_attribute("http.route", template)
            if failure is not None:
                # Answered outside (Starlette's last-resort handler): a 500, unless the client
                # had already been given a status.
                if not status:
                    span.set_attribute("http.response.status_code", 500)
                tracing.mark_failed(span, failure)
            elif status >= 500:
                span.set_attribute("error.type", str(status))
                span.set_status(Status(StatusCode.ERROR, str(status)))
            span.end()
