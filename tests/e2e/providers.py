"""What the bring-your-own-key tests share: the provider stand-ins' control API and clients."""

from __future__ import annotations

import uuid
from typing import Any

import anthropic
import httpx
from openai import OpenAI

from tests.e2e.processes import Services

CLAUDE = "anthropic/claude-3-5-haiku-latest"
GPT = "openai/gpt-4o-mini"
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Say hello."},
]


def control(gov: Services, provider: str, method: str, path: str, **body: Any) -> Any:
    payload = body if method in ("POST", "PUT") else None
    resp = httpx.request(method, gov.fakes[provider] + path, json=payload, timeout=10)
    resp.raise_for_status()
    return resp.json()


def script(gov: Services, provider: str, **fields: Any) -> None:
    """Resets the stand-in (its script and its request log) and scripts its next answers."""
    control(gov, provider, "POST", "/_control/reset")
    control(gov, provider, "POST", "/_control/script", **fields)


def received(gov: Services, provider: str) -> list[dict[str, Any]]:
    requests: list[dict[str, Any]] = control(gov, provider, "GET", "/_control/requests")["requests"]
    return requests


def provider_secret(provider: str) -> str:
    prefix = "sk-ant-api03-" if provider == "anthropic" else "sk-proj-"
    return prefix + uuid.uuid4().hex + uuid.uuid4().hex


def client(gov: Services, key: str, edge: str = "edge") -> OpenAI:
    return OpenAI(base_url=gov.edges[edge].base_url, api_key=key, max_retries=0)


def anthropic_client(gov: Services, key: str, edge: str = "edge") -> anthropic.Anthropic:
    """The Anthropic SDK pointed at Sluice: its base URL is the edge's root (it adds /v1)."""
    base = gov.edges[edge].base_url.removesuffix("/v1")
    return anthropic.Anthropic(base_url=base, api_key=key, max_retries=0)
