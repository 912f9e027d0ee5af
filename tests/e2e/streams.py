"""A chat completion stream read event by event over raw HTTP, so that a test sees exactly how it
ended (`[DONE]`, an error event, or cut) and what the client received."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import httpx

MODEL = "smollm2-135m-instruct"


@dataclass
class Streamed:
    """What one client received."""

    status: int = 0
    request_id: str = ""
    content_chunks: int = 0
    done: bool = False
    error: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    body: str = ""
    # Set once the first content arrived (the request was admitted and is generating).
    started: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def outcome(self) -> str:
        """ "done", "error_after_output", "error" (an error before any output: an HTTP error or an
        error event first) or "cut" (the stream ended with neither)."""
        if self.done:
            return "done"
        if self.error is not None:
            return "error_after_output" if self.content_chunks else "error"
        return "cut"


async def stream_chat(
    client: httpx.AsyncClient,
    base_url: str,
    key: str,
    *,
    prompt: str = "Count from 1 to 1000, separated by spaces.",
    max_tokens: int = 16,
    into: Streamed | None = None,
) -> Streamed:
    """One streamed chat completion with usage; never raises for what the server answered."""
    out = into or Streamed()
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = {"authorization": f"Bearer {key}"}
    try:
        async with client.stream(
            "POST", f"{base_url}/chat/completions", json=body, headers=headers
        ) as resp:
            out.status = resp.status_code
            out.request_id = resp.headers.get("x-request-id", "")
            if resp.status_code != 200:
                out.body = (await resp.aread()).decode(errors="replace")
                out.error = {"status": resp.status_code, "body": out.body}
                return out
            async for line in resp.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line.removeprefix("data: ")
                if data == "[DONE]":
                    out.done = True
                    continue
                event = json.loads(data)
                if "error" in event:
                    out.error = event["error"]
                    continue
                if event.get("usage"):
                    out.usage = event["usage"]
                for choice in event.get("choices", []):
                    if choice.get("delta", {}).get("content"):
                        out.content_chunks += 1
                        out.started.set()
    except httpx.HTTPError as exc:
        out.body = f"{exc.__class__.__name__}: {exc}"
    finally:
        out.started.set()
    return out
