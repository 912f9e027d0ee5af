"""What the fake upstream providers share: the script a test sets, the log of received requests,
the control endpoints, and running a fake on a free loopback port (in a thread or as a process).

Control API (the same for every fake):

- ``POST /_control/script`` with a JSON object of `Script` fields: replaces the script (fields
  left out take their defaults); answers the script in force.
- ``GET /_control/script``: the script in force.
- ``GET /_control/requests``: ``{"requests": [{"method", "path", "headers", "body",
  "outcome"}, ...]}``, oldest first. ``outcome`` is "pending", "completed", "failed"
  (injected status), "rejected" (bad key or body), "dropped", "error_event" or "aborted" (the
  client went away mid-stream).
- ``DELETE /_control/requests``: clears that log.
- ``POST /_control/reset``: default script, an empty log, and nothing stored.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import re
import secrets
import socket
import string
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


@dataclass
class Script:
    """How the fake answers the next requests; every field is optional in the control API."""

    # The assistant's reply, streamed as `chunks` (default: the reply split after each word).
    reply: str = "Hello from the fake upstream."
    chunks: list[str] | None = None
    prompt_tokens: int = 11
    # Prompt tokens served from the provider's prompt cache (reported as each provider does).
    cached_tokens: int = 0
    # Default: one token per chunk.
    completion_tokens: int | None = None
    # The provider's own value ("stop", "length" / "end_turn", "max_tokens", ...);
    # empty = the provider's normal end.
    finish_reason: str = ""
    # Fail the next `fail_next` requests with `fail_status` and the provider's error JSON.
    fail_next: int = 0
    fail_status: int = 500
    retry_after: str | None = None
    retry_after_ms: str | None = None
    error_message: str = ""
    error_code: str | None = None
    # Every streamed request: close the connection abruptly after this many content chunks.
    drop_after_chunks: int | None = None
    # Every streamed request: send the provider's in-stream error event after this many chunks.
    error_event_after_chunks: int | None = None
    # Pauses: before each chunk, and before the response headers.
    chunk_delay_s: float = 0.0
    response_delay_s: float = 0.0
    # When set, any other key is refused with 401 (the provider's authentication error).
    expected_key: str | None = None
    # Tool calls to answer with, each {"name": str, "arguments": str (JSON)}; `reply`, when not
    # empty, comes first as text. A request whose last turn carries tool results is answered
    # with `reply` as plain text instead, so that a client can run a tool loop.
    tool_calls: list[dict[str, Any]] | None = None
    # Prompt tokens written to the provider's prompt cache (Anthropic reports them apart).
    cache_creation_tokens: int = 0
    # Length of the embedding vectors when a request does not ask for `dimensions`.
    embedding_dimensions: int = 16
    # What `GET /v1/models` lists.
    models: list[str] = field(default_factory=lambda: ["gpt-4o-mini", "text-embedding-3-small"])

    def __post_init__(self) -> None:
        if self.tool_calls is None:
            return
        calls = []
        for call in self.tool_calls:
            if not isinstance(call, dict) or not isinstance(call.get("name"), str):
                raise TypeError("each of tool_calls needs a 'name'")
            arguments = call.get("arguments", "{}")
            try:
                parsed = json.loads(arguments)
            except (TypeError, ValueError):
                parsed = None
            if not isinstance(parsed, dict):
                raise TypeError("tool_calls arguments must be a JSON object string")
            calls.append({"name": call["name"], "arguments": arguments})
        self.tool_calls = calls

    def pieces(self) -> list[str]:
        if self.chunks is not None:
            return list(self.chunks)
        return re.findall(r"\S+\s*", self.reply) or [self.reply]

    def completion(self, units: int | None = None) -> int:
        """Scripted completion tokens, else `units` (the streamed pieces of an answer), else one
        per piece of the reply."""
        if self.completion_tokens is not None:
            return self.completion_tokens
        return len(self.pieces()) if units is None else units


def fragments(text: str, parts: int = 3) -> list[str]:
    """`text` cut into up to `parts` consecutive pieces, as providers stream tool arguments."""
    if not text:
        return []
    size = -(-len(text) // parts)
    return [text[i : i + size] for i in range(0, len(text), size)]


def random_id(prefix: str) -> str:
    """An id in a provider's style: `call_...` (OpenAI), `toolu_...` (Anthropic)."""
    alphabet = string.ascii_letters + string.digits
    return prefix + "".join(secrets.choice(alphabet) for _ in range(24))


class DropConnection(Exception):
    """Raised inside a streaming body: the server closes the socket without ending the body."""


class _QuietDrops(logging.Filter):
    """Keeps uvicorn from logging a traceback for each connection a script drops on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, DropConnection)


def quiet_drops() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietDrops) for f in logger.filters):
        logger.addFilter(_QuietDrops())


@dataclass
class Record:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    outcome: str = "pending"


@dataclass
class FakeState:
    """The script and the request log, shared by the server thread and the test thread."""

    script: Script = field(default_factory=Script)
    records: list[Record] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Objects the provider keeps by id (OpenAI's stored responses), until a reset.
    stored: dict[str, Any] = field(default_factory=dict)

    def set_script(self, **fields: Any) -> Script:
        with self.lock:
            self.script = Script(**fields)
            return self.script

    def reset(self) -> None:
        with self.lock:
            self.script = Script()
            self.records.clear()
            self.stored.clear()

    def requests(self) -> list[dict[str, Any]]:
        with self.lock:
            return [dataclasses.asdict(r) for r in self.records]

    def clear_requests(self) -> None:
        with self.lock:
            self.records.clear()

    async def record(self, request: Request) -> tuple[Record, Any]:
        raw = await request.body()
        try:
            body = await request.json() if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        rec = Record(request.method, request.url.path, dict(request.headers), body)
        with self.lock:
            self.records.append(rec)
        return rec, body

    def take_failure(self) -> Script | None:
        """The script, if the current request is one of the scripted failures."""
        with self.lock:
            if self.script.fail_next > 0:
                self.script.fail_next -= 1
                return self.script
            return None

    def current(self) -> Script:
        with self.lock:
            return dataclasses.replace(self.script)


def retry_headers(script: Script) -> dict[str, str]:
    headers: dict[str, str] = {}
    if script.retry_after is not None:
        headers["retry-after"] = script.retry_after
    if script.retry_after_ms is not None:
        headers["retry-after-ms"] = script.retry_after_ms
    return headers


def control_routes(state: FakeState) -> list[Route]:
    async def post_script(request: Request) -> Response:
        fields = await request.json()
        try:
            script = state.set_script(**fields)
        except TypeError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(dataclasses.asdict(script))

    async def get_script(request: Request) -> Response:
        return JSONResponse(dataclasses.asdict(state.current()))

    async def get_requests(request: Request) -> Response:
        return JSONResponse({"requests": state.requests()})

    async def delete_requests(request: Request) -> Response:
        state.clear_requests()
        return JSONResponse({"requests": []})

    async def reset(request: Request) -> Response:
        state.reset()
        return JSONResponse(dataclasses.asdict(state.current()))

    return [
        Route("/_control/script", post_script, methods=["POST"]),
        Route("/_control/script", get_script, methods=["GET"]),
        Route("/_control/requests", get_requests, methods=["GET"]),
        Route("/_control/requests", delete_requests, methods=["DELETE"]),
        Route("/_control/reset", reset, methods=["POST"]),
    ]


async def paced(record: Record, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Streams `events`, noting how the stream ended in the request log."""
    try:
        async for chunk in events:
            yield chunk
        record.outcome = "completed" if record.outcome == "pending" else record.outcome
    except DropConnection:
        record.outcome = "dropped"
        raise
    except (asyncio.CancelledError, GeneratorExit, OSError):
        record.outcome = "aborted"
        raise


async def pause(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)


class RunningFake:
    """A fake served by uvicorn in a daemon thread on a free loopback port."""

    def __init__(self, app: Starlette, state: FakeState) -> None:
        quiet_drops()
        self.state = state
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._sock = sock
        config = uvicorn.Config(
            app,
            log_level="warning",
            lifespan="off",
            ws="none",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RunningFake:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("fake upstream did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    # In-process conveniences: the same as the control endpoints.
    def script(self, **fields: Any) -> Script:
        return self.state.set_script(**fields)

    def requests(self) -> list[dict[str, Any]]:
        return self.state.requests()

    def reset(self) -> None:
        self.state.reset()

    def __enter__(self) -> RunningFake:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def cli(build: Callable[[FakeState], Starlette], description: str) -> None:
    """`python -m tests.fakes.<fake> --port N`: serve until interrupted."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    quiet_drops()
    uvicorn.run(build(FakeState()), host=args.host, port=args.port, log_level="warning")
