"""The edge's outermost layer under a real server: an unhandled error is a 500 in OpenAI's shape
on a connection that stays open, and oversized headers are refused with a 431."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bench.stack import free_port
from services.edge.app import MAX_HEADER_BYTES, Boundary


async def boom(request: Request) -> Response:
    raise RuntimeError("internal detail that must not reach the client")


async def fine(request: Request) -> Response:
    return JSONResponse({"ok": True})


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    app = Starlette(
        routes=[Route("/boom", boom), Route("/fine", fine)], middleware=[Middleware(Boundary)]
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    yield port
    server.should_exit = True
    thread.join(timeout=10)


def test_an_unhandled_error_is_a_500_and_the_connection_serves_the_next_request(
    port: int,
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/boom")
        resp = conn.getresponse()
        body = json.loads(resp.read())
        sock = conn.sock
        assert resp.status == 500
        assert body["error"]["type"] == "server_error"
        assert "internal detail" not in json.dumps(body)
        conn.request("GET", "/fine")
        resp = conn.getresponse()
        assert resp.status == 200
        assert json.loads(resp.read()) == {"ok": True}
        assert conn.sock is sock
    finally:
        conn.close()


def test_headers_over_the_limit_are_a_431_in_openais_shape(port: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/fine", headers={"x-padding": "a" * MAX_HEADER_BYTES})
        resp = conn.getresponse()
        assert resp.status == 431
        assert json.loads(resp.read())["error"]["code"] == "request_header_fields_too_large"
        conn.request("GET", "/fine", headers={"x-padding": "a" * 1000})
        assert conn.getresponse().status == 200
    finally:
        conn.close()
