"""The gateway benchmark's stand-in for OpenAI: a bare asyncio HTTP/1.1 server on loopback that
answers every `POST /v1/chat/completions` at once with the same non-streaming `chat.completion`
(usage included), so that what a gateway adds is all that differs between the paths measured.

Not `tests.fakes.openai_upstream`: that one validates, records and scripts each request through
Starlette, which is the right thing for tests and too slow to stay out of the way of a proxy
under load. Here a request costs one header scan and one JSON parse (a malformed body is a 400).
Keep-alive, `Content-Length` and chunked bodies; no streaming.

    python -m bench.upstream --port N     # base URL http://127.0.0.1:N/v1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from typing import Any, cast

MODEL = "gpt-4o-mini"
MAX_HEAD = 64 * 1024
MAX_BODY = 8 * 1024 * 1024


def completion(created: int) -> dict[str, Any]:
    """The one answer, shaped as OpenAI's API returns a non-streaming chat completion."""
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": created,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hi!", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 9,
            "completion_tokens": 2,
            "total_tokens": 11,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
        "system_fingerprint": "fp_bench",
    }


def response(status: int, body: bytes, content_type: str = "application/json") -> bytes:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 411: "Length Required"}
    return (
        f"HTTP/1.1 {status} {reason.get(status, 'Error')}\r\n"
        f"content-type: {content_type}\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode() + body


def error(status: int, message: str) -> bytes:
    payload = {"error": {"message": message, "type": "invalid_request_error", "param": None}}
    return response(status, json.dumps(payload).encode())


def parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    """Method, target and lower-cased headers of one request head (without the blank line)."""
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return method, target, headers


def chunked_body(buf: bytes | bytearray, start: int) -> tuple[bytes, int] | None:
    """A chunked body beginning at `start`: (body, offset after it), or None if incomplete."""
    parts = []
    at = start
    while True:
        eol = buf.find(b"\r\n", at)
        if eol < 0:
            return None
        size = int(bytes(buf[at:eol]).split(b";", 1)[0], 16)
        at = eol + 2
        if size == 0:
            # Trailers, if any, end with an empty line.
            end = buf.find(b"\r\n\r\n", at - 2)
            return (b"".join(parts), end + 4) if end >= 0 else None
        if len(buf) < at + size + 2:
            return None
        parts.append(bytes(buf[at : at + size]))
        at += size + 2


class Handler:
    """Turns one request into the bytes of its response."""

    def __init__(self) -> None:
        self.ok = response(200, json.dumps(completion(int(time.time()))).encode())

    def answer(self, method: str, target: str, body: bytes) -> bytes:
        path = target.split("?", 1)[0]
        if method == "GET" and path in ("/health", "/v1/models"):
            return response(200, json.dumps({"object": "list", "data": [{"id": MODEL}]}).encode())
        if method != "POST" or path not in ("/v1/chat/completions", "/chat/completions"):
            return error(404, f"no route {method} {path}")
        try:
            request = json.loads(body)
        except ValueError:
            return error(400, "the body is not JSON")
        if not isinstance(request, dict) or not isinstance(request.get("messages"), list):
            return error(400, "messages is required")
        if request.get("stream"):
            return error(400, "the benchmark's stand-in does not stream")
        return self.ok


class Connection(asyncio.Protocol):
    """One keep-alive client connection; requests are answered in the order they arrive."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, though they are one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.transport is not None and not self.transport.is_closing():
            if not self._one():
                return

    def _one(self) -> bool:
        """Answers one complete request from the buffer; False if it is not all there yet."""
        assert self.transport is not None
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > MAX_HEAD:
                self._fail(error(400, "request head too large"))
            return False
        try:
            method, target, headers = parse_head(bytes(self.buf[:end]))
        except ValueError:
            self._fail(error(400, "malformed request head"))
            return False
        start = end + 4
        if "chunked" in headers.get("transfer-encoding", "").lower():
            parsed = chunked_body(self.buf, start)
            if parsed is None:
                return False
            body, after = parsed
        else:
            length = int(headers.get("content-length", "0") or 0)
            if length > MAX_BODY:
                self._fail(error(400, "body too large"))
                return False
            if len(self.buf) < start + length:
                return False
            body, after = bytes(self.buf[start : start + length]), start + length
        del self.buf[:after]
        self.transport.write(self.handler.answer(method, target, body))
        if headers.get("connection", "").lower() == "close":
            self.transport.close()
            return False
        return True

    def _fail(self, payload: bytes) -> None:
        assert self.transport is not None
        self.transport.write(payload)
        self.transport.close()


async def serve(host: str, port: int) -> None:
    handler = Handler()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Connection(handler), host, port, backlog=1024)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.upstream", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        import uvloop  # the services' event loop, where installed
    except ImportError:
        asyncio.run(serve(args.host, args.port))
    else:
        uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
