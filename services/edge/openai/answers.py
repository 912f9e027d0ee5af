"""A chat request's answer as data, so that the chat route and the routes translated onto it (the
Responses API) consume one and the same run of a hosted or Anthropic model.

An admitted request run by `hosted.run` or `upstream_chat.run_anthropic` answers a `ChatAnswer`:
the whole `chat.completion` object (already settled), or the stream's `chat.completion.chunk`
objects in order. A stream is settled before its last object is handed over (the usage chunk,
when asked for), so whoever consumes it may send its own end right after the iteration ends. A
stream that failed after output began ends with one `{"error": {...}}` object (OpenAI's error
body), after settlement; a consumer that goes away (its task cancelled, or the iterator closed)
has the request settled as cancelled by the producer.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any


@dataclass
class ChatAnswer:
    # Set for a request that did not ask to stream: the answer, with its usage.
    completion: dict[str, Any] | None = None
    # Set for a streamed request: its chunks (see the module doc); close it when done early.
    chunks: AsyncGenerator[dict[str, Any], None] | None = None


def is_error(chunk: dict[str, Any]) -> bool:
    """Whether a streamed object is the error that ends a failed stream."""
    return "error" in chunk and "choices" not in chunk
