"""Serves the console's files with its security headers, the one place they are defined.

The pages hold no data and need no authentication: everything they show, they fetch from `/v1`
with the user's API key or from `/admin/v1` with the operator token, held in the browser tab's
memory (sessionStorage), so the console can do nothing its user could not do with `curl`. The
Content-Security-Policy allows scripts, styles and connections from this origin only, so the
HTML carries no inline script or style (tests/edge/test_console.py checks that it stays so).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path, PurePosixPath

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

STATIC_DIR = Path(__file__).parent / "static"

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "img-src 'self' data:",
        "object-src 'none'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
    )
)

SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    # frame-ancestors for browsers that predate it.
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
    # Revalidated on every load (StaticFiles answers 304 by ETag), so an upgrade shows at once.
    "cache-control": "no-cache",
}

# Only these kinds of file are served, each with a fixed type: with nosniff, a module script
# must come as JavaScript, and the platform's mimetypes table differs between hosts.
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


def secured(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


_REASONS = {404: "Not Found", 405: "Method Not Allowed"}


def _refusal(status: int) -> Response:
    return secured(PlainTextResponse(f"{status} {_REASONS.get(status, 'Error')}", status))


class ConsoleFiles(StaticFiles):
    """StaticFiles whose every answer, a missing file included, carries the security headers."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        suffix = PurePosixPath(path).suffix
        if suffix not in CONTENT_TYPES:
            return _refusal(404)
        try:
            response = await super().get_response(path, scope)
        except HTTPException as exc:
            refusal = _refusal(exc.status_code)
            refusal.headers.update(exc.headers or {})
            return refusal
        if response.status_code == 200:
            response.headers["content-type"] = CONTENT_TYPES[suffix]
        return secured(response)


class _AnyMethod:
    """An endpoint that sees every method (Starlette answers a function endpoint's other
    methods itself, without these headers), so that it can refuse them with the headers."""

    def __init__(self, endpoint: Callable[[Request], Awaitable[Response]]) -> None:
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.endpoint(Request(scope, receive))
        await response(scope, receive, send)


async def index(request: Request) -> Response:
    if request.method not in ("GET", "HEAD"):
        response = _refusal(405)
        response.headers["allow"] = "GET, HEAD"
        return response
    return secured(FileResponse(STATIC_DIR / "index.html", media_type=CONTENT_TYPES[".html"]))


async def not_found(request: Request) -> Response:
    return _refusal(404)


ROUTES = [
    Route("/console", _AnyMethod(index)),
    Route("/console/", _AnyMethod(index)),
    Mount("/console/static", app=ConsoleFiles(directory=STATIC_DIR), name="console-static"),
    # Anything else under /console, so that no answer there comes without the headers.
    Route("/console/{rest:path}", _AnyMethod(not_found)),
]
