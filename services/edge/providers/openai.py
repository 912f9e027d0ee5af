"""The OpenAI-compatible provider: the client's body forwarded whole, the answer relayed.

The only edits to a request are the documented ones (`forward_body`): `model` becomes the
provider's model name; a streamed request asks for usage (`stream_options.include_usage`), so
that billing uses the provider's own numbers; and a completion cap (`max_completion_tokens`, or
the `max_tokens` the client used) is lowered where the organization's plan caps the context.
A Responses API body (`forward_responses_body`) gets the model name and its
`max_output_tokens` lowered the same way, nothing else.
Answers come back with `model` as `openai/<the provider's model>`; a stream whose client did not
ask for usage has the usage chunk and the `usage: null` fields that asking adds taken out again,
so the client sees what the provider would have sent it.
"""

from __future__ import annotations

import json
from typing import Any

from services.common.settings import Settings
from services.common.tracing import Tracing
from services.edge.providers.base import (
    EventCheck,
    HTTPClients,
    ProviderClient,
    SSEEvent,
    UpstreamFailure,
    error_fields,
)
from services.edge.providers.catalog import OPENAI
from services.edge.providers.credentials import ProviderKey

DONE = "[DONE]"
PREFIX = OPENAI + "/"


def auth_headers(key: ProviderKey) -> dict[str, str]:
    return {"authorization": f"Bearer {key.reveal()}"}


def event_error(event: SSEEvent) -> UpstreamFailure | None:
    """OpenAI sends an error in the middle of a stream as a data line with an `error` object."""
    if '"error"' not in event.data:
        return None
    try:
        obj = json.loads(event.data)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not obj.get("error"):
        return None
    message, code, _ = error_fields(obj)
    return UpstreamFailure("stream", message or "error event in the stream", code=code)


def client(
    settings: Settings,
    http: HTTPClients,
    check: EventCheck = event_error,
    tracing: Tracing | None = None,
) -> ProviderClient:
    return ProviderClient(
        OPENAI,
        http,
        auth_headers,
        check,
        max_retries=settings.upstream_max_retries,
        tracing=tracing,
    )


def token_cap_field(body: dict[str, Any]) -> str:
    """The completion-cap field to edit: the one the client sent, else the current name."""
    if "max_tokens" in body and "max_completion_tokens" not in body:
        return "max_tokens"
    return "max_completion_tokens"


def forward_body(
    body: dict[str, Any], model: str, *, completion_cap: int | None, usage_in_stream: bool
) -> dict[str, Any]:
    """The body sent upstream: the client's, with only the edits in the module doc."""
    out = dict(body)
    out["model"] = model
    if completion_cap is not None:
        field = token_cap_field(body)
        wanted = body.get(field)
        if not isinstance(wanted, int) or wanted > completion_cap:
            out[field] = completion_cap
    if usage_in_stream and body.get("stream"):
        options = body.get("stream_options")
        out["stream_options"] = {
            **(options if isinstance(options, dict) else {}),
            "include_usage": True,
        }
    return out


def forward_responses_body(
    body: dict[str, Any], model: str, *, completion_cap: int | None
) -> dict[str, Any]:
    """A Responses API body as sent upstream: the client's, with `model` the provider's name and
    `max_output_tokens` lowered to `completion_cap` (the plan's) where it is higher or absent.
    Streams need no edit for billing: their `response.completed` carries the usage."""
    out = dict(body)
    out["model"] = model
    if completion_cap is not None:
        wanted = body.get("max_output_tokens")
        if not isinstance(wanted, int) or wanted > completion_cap:
            out["max_output_tokens"] = completion_cap
    return out


def public_model(value: Any, fallback: str) -> str:
    """`openai/<model>` for the model a provider answered with."""
    name = value if isinstance(value, str) and value else fallback
    return name if name.startswith(PREFIX) else PREFIX + name


def client_wants_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True
