"""The Anthropic provider: the Messages API (`POST /v1/messages`, version 2023-06-01).

Two kinds of caller use it: OpenAI chat requests for `anthropic/<model>`, translated both ways by
`services.edge.providers.anthropic_chat`, and Anthropic SDK requests to `/v1/messages`, whose
body goes upstream as sent (model name mapped, `max_tokens` lowered where the organization's plan
caps the context) and whose answer comes back unchanged.
"""

from __future__ import annotations

import json
from typing import Any

from services.common.settings import Settings
from services.common.tracing import Tracing
from services.edge.providers.anthropic_chat import ERROR_STATUS
from services.edge.providers.base import (
    HTTPClients,
    ProviderClient,
    SSEEvent,
    UpstreamFailure,
    as_dict,
)
from services.edge.providers.catalog import ANTHROPIC
from services.edge.providers.credentials import ProviderKey

API_VERSION = "2023-06-01"


def auth_headers(key: ProviderKey) -> dict[str, str]:
    return {"x-api-key": key.reveal()}


def event_error(event: SSEEvent) -> UpstreamFailure | None:
    """An `error` event (e.g. overloaded_error) in a Messages stream, as a failure."""
    if event.event != "error" and '"error"' not in event.data[:40]:
        return None
    try:
        obj = json.loads(event.data)
    except ValueError:
        return None
    if not isinstance(obj, dict) or obj.get("type") != "error":
        return None
    err = as_dict(obj.get("error"))
    err_type = str(err.get("type") or "api_error")
    return UpstreamFailure(
        "http", str(err.get("message") or err_type), status=ERROR_STATUS.get(err_type, 500)
    )


def client(settings: Settings, http: HTTPClients, tracing: Tracing | None = None) -> ProviderClient:
    return ProviderClient(
        ANTHROPIC,
        http,
        auth_headers,
        event_error,
        max_retries=settings.upstream_max_retries,
        tracing=tracing,
    )


def version_headers(headers: dict[str, str] | None = None) -> dict[str, str]:
    """`anthropic-version` (the client's, else the one this module speaks) and any
    `anthropic-beta` the client sent, to pass on."""
    out = {"anthropic-version": API_VERSION}
    for name, value in (headers or {}).items():
        if name.lower() in ("anthropic-version", "anthropic-beta"):
            out[name.lower()] = value
    return out


def forward_messages_body(
    body: dict[str, Any], model: str, completion_cap: int | None
) -> dict[str, Any]:
    """A `/v1/messages` body as sent upstream: the provider's model name, `max_tokens` capped."""
    out = dict(body)
    out["model"] = model
    if completion_cap is not None and out.get("max_tokens", 0) > completion_cap:
        out["max_tokens"] = completion_cap
    return out
