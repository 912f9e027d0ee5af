"""Closed-loop HTTP load for the gateway benchmark: C workers, each sending the same non-streaming
request again as soon as its last answer arrived, for a fixed time.

Each worker has its own `httpx.AsyncClient` holding one keep-alive connection, opened in the
warm-up. Not one client with a pool of 64: httpcore scans its whole pool for every request, and
on this 2-core machine that doubled the client's CPU per request at concurrency 64 (1.6-2.9 ms
against 0.8) and made the client, not the server, the limit of the direct path (126-300 req/s
against 620-640 with a client per worker). Run under uvloop where it is installed, like the
services. A request counts as answered only with status 200 and a `chat.completion` body;
anything else is an error, counted by kind (the status, or the exception's name), and its
latency is left out of the percentiles.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

REQUEST_TIMEOUT_S = 30.0
T = TypeVar("T")


@dataclass(frozen=True)
class Target:
    """One path under test: where to post, with which key and body."""

    name: str
    url: str  # the full chat-completions URL
    key: str
    body: dict[str, Any]


@dataclass
class Phase:
    """What one run of C workers against one target saw."""

    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    wall_s: float = 0.0
    client_cpu_s: float = 0.0

    @property
    def answered(self) -> int:
        return len(self.latencies_ms)

    @property
    def requests(self) -> int:
        return self.answered + sum(self.errors.values())


def make_clients(workers: int) -> list[httpx.AsyncClient]:
    """One client with one connection for each worker."""
    return [
        httpx.AsyncClient(
            timeout=httpx.Timeout(REQUEST_TIMEOUT_S),
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )
        for _ in range(workers)
    ]


async def close(clients: list[httpx.AsyncClient]) -> None:
    for client in clients:
        await client.aclose()


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` on uvloop where it is installed (the services' loop), plain asyncio else."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def error_kind(status: int, body: bytes) -> str | None:
    """None for a chat completion; else a short name for what came back."""
    if status != 200:
        return f"HTTP {status}"
    if b'"chat.completion"' not in body:
        return "200 without a chat.completion"
    return None


async def one(client: httpx.AsyncClient, target: Target, payload: bytes, phase: Phase) -> None:
    headers = {"authorization": f"Bearer {target.key}", "content-type": "application/json"}
    start = time.perf_counter()
    try:
        resp = await client.post(target.url, content=payload, headers=headers)
    except httpx.TimeoutException:
        phase.errors["timeout"] += 1
        return
    except httpx.HTTPError as exc:
        phase.errors[type(exc).__name__] += 1
        return
    elapsed = (time.perf_counter() - start) * 1e3
    kind = error_kind(resp.status_code, resp.content)
    if kind is None:
        phase.latencies_ms.append(elapsed)
    else:
        phase.errors[kind] += 1


async def run(
    clients: list[httpx.AsyncClient], target: Target, concurrency: int, duration_s: float
) -> Phase:
    """`concurrency` workers (the first of `clients`, one each) for `duration_s`; each finishes
    the request it has in flight when the time is up, and the wall time runs until the last one
    has."""
    if concurrency > len(clients):
        raise ValueError(f"{concurrency} workers need as many clients, not {len(clients)}")
    phase = Phase()
    payload = json.dumps(target.body).encode()
    cpu0 = time.process_time()
    start = time.perf_counter()
    deadline = start + duration_s

    async def worker(client: httpx.AsyncClient) -> None:
        while time.perf_counter() < deadline:
            await one(client, target, payload, phase)

    await asyncio.gather(*(worker(client) for client in clients[:concurrency]))
    phase.wall_s = time.perf_counter() - start
    phase.client_cpu_s = time.process_time() - cpu0
    return phase
