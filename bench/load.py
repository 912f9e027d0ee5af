"""Load through the public HTTP surface: C streaming chat completions released at once.

Plain `httpx` and a hand-read SSE stream rather than the `openai` client: the client shares the
machine's cores with the stack, and its parsing cost should stay as small as it can be. Every
request is timestamped on the client side (send, each content chunk, end of stream).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx

from bench.config import MODEL
from bench.metrics import StreamRecord

REQUEST_TIMEOUT_S = 600.0


class LoadError(RuntimeError):
    """The stack refused or failed a request: a benchmark on errors would mean nothing."""


def chat_body(prompt: str, max_tokens: int) -> dict[str, Any]:
    """A greedy, streamed chat completion that reports usage in its last chunk."""
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def stream_one(
    client: httpx.AsyncClient, body: dict[str, Any], release: asyncio.Event
) -> StreamRecord:
    """Waits for the common release, then streams one completion and times its chunks."""
    await release.wait()
    record = StreamRecord(sent=time.perf_counter())
    parts: list[str] = []
    async with client.stream("POST", "/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            detail = (await resp.aread()).decode(errors="replace")
            raise LoadError(f"HTTP {resp.status_code}: {detail[:500]}")
        async for line in resp.aiter_lines():
            if not line.startswith("data: "):
                continue
            now = time.perf_counter()
            payload = line[6:]
            if payload == "[DONE]":
                break
            event = json.loads(payload)
            if "error" in event:
                raise LoadError(f"stream error: {event['error']}")
            for choice in event.get("choices") or ():
                content = (choice.get("delta") or {}).get("content")
                if content:
                    record.chunk_times.append(now)
                    parts.append(content)
                if choice.get("finish_reason"):
                    record.finish_reason = choice["finish_reason"]
            if usage := event.get("usage"):
                record.completion_tokens = int(usage["completion_tokens"])
                record.prompt_tokens = int(usage["prompt_tokens"])
    record.done = time.perf_counter()
    record.text = "".join(parts)
    if not record.chunk_times or not record.completion_tokens:
        raise LoadError("a stream ended without content or usage")
    return record


async def run_round(
    client: httpx.AsyncClient, concurrency: int, prompt: str, max_tokens: int
) -> list[StreamRecord]:
    """`concurrency` identical requests, all released at the same instant; waits for all."""
    release = asyncio.Event()
    body = chat_body(prompt, max_tokens)
    tasks = [asyncio.create_task(stream_one(client, body, release)) for _ in range(concurrency)]
    await asyncio.sleep(0)  # every task is parked on the event before it fires
    release.set()
    return list(await asyncio.gather(*tasks))


def make_client(base_url: str, key: str, connections: int) -> httpx.AsyncClient:
    """One keep-alive pool large enough that no request waits for a connection."""
    return httpx.AsyncClient(
        base_url=base_url,
        headers={"Authorization": f"Bearer {key}"},
        timeout=httpx.Timeout(REQUEST_TIMEOUT_S),
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
    )


async def measure_concurrency(
    base_url: str,
    key: str,
    concurrency: int,
    prompt: str,
    max_tokens: int,
    rounds: int = 1,
    warmup_tokens: int = 8,
) -> list[list[StreamRecord]]:
    """A short warm-up round at the same concurrency (it also opens the pool's connections, so
    that connection setup stays out of TTFT), then `rounds` measured rounds one after another."""
    async with make_client(base_url, key, max(concurrency, 1)) as client:
        await run_round(client, concurrency, prompt, warmup_tokens)
        return [await run_round(client, concurrency, prompt, max_tokens) for _ in range(rounds)]


def measure(
    base_url: str, key: str, concurrency: int, prompt: str, max_tokens: int, rounds: int = 1
) -> list[list[StreamRecord]]:
    """Synchronous entry point for the orchestrator."""
    return asyncio.run(
        measure_concurrency(base_url, key, concurrency, prompt, max_tokens, rounds=rounds)
    )
