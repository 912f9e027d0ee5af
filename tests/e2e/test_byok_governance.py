"""Governance on the bring-your-own-key routes exactly as on chat: budget races on embeddings and
on the Messages API never overshoot, IP rules and model scopes apply, refused requests never
reach the provider, and the ledger names each endpoint and provider."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import anthropic
import openai
import pytest
from openai import AsyncOpenAI

from tests.e2e.processes import Services
from tests.e2e.providers import CLAUDE, GPT, anthropic_client, client, received, script

BUDGET = 400


def budget_state(gov: Services, key: str) -> dict[str, int]:
    with client(gov, key) as c:
        resp = c.get("/usage/budgets", cast_to=object)
    assert isinstance(resp, dict)
    (row,) = [b for b in resp["data"] if b["scope"] == "key"]
    return {k: int(row[k]) for k in ("limit_tokens", "used_tokens", "reserved_tokens")}


async def race(n: int, one: Callable[[int], Awaitable[str]]) -> list[str]:
    return await asyncio.gather(*(one(i) for i in range(n)))


def check_race(gov: Services, org: str, key: str, outcomes: list[str], provider: str) -> None:
    served = outcomes.count("ok")
    assert served and served < len(outcomes), outcomes
    assert set(outcomes) == {"ok", "insufficient_quota"}
    rows = gov.ledger(org)
    ok = [r for r in rows if r["status"] == "ok"]
    used = sum(int(r["prompt_tokens"]) + int(r["completion_tokens"]) for r in rows)
    assert len(ok) == served
    assert used <= BUDGET
    state = budget_state(gov, key)
    assert state == {"limit_tokens": BUDGET, "used_tokens": used, "reserved_tokens": 0}
    # Refused requests never reached the provider.
    assert len(received(gov, provider)) == served


def test_embeddings_budget_race_never_overshoots(gov: Services, byok: dict[str, str]) -> None:
    script(gov, "openai", prompt_tokens=12)
    key = gov.new_key(byok["org"], "emb", "--budget-tokens", str(BUDGET), "--budget-period", "day")
    bases = [gov.edges["edge"].base_url, gov.edges["edge-b"].base_url]

    async def main() -> list[str]:
        clients = [AsyncOpenAI(base_url=b, api_key=key, max_retries=0) for b in bases]

        async def one(i: int) -> str:
            try:
                await clients[i % 2].embeddings.create(
                    model="openai/text-embedding-3-small", input="x" * 40
                )
                return "ok"
            except openai.RateLimitError as exc:
                return str(exc.code)

        try:
            return await race(40, one)
        finally:
            for c in clients:
                await c.close()

    check_race(gov, byok["org"], key, asyncio.run(main()), "openai")


def test_messages_budget_race_never_overshoots(gov: Services, byok: dict[str, str]) -> None:
    script(gov, "anthropic", reply="Hi there.", prompt_tokens=10, completion_tokens=20)
    key = gov.new_key(byok["org"], "msg", "--budget-tokens", str(BUDGET), "--budget-period", "day")
    bases = [gov.edges["edge"].base_url, gov.edges["edge-b"].base_url]

    async def main() -> list[str]:
        clients = [
            anthropic.AsyncAnthropic(base_url=b.removesuffix("/v1"), api_key=key, max_retries=0)
            for b in bases
        ]

        async def one(i: int) -> str:
            try:
                async with clients[i % 2].messages.stream(
                    model="claude-3-5-haiku-latest",
                    max_tokens=30,
                    messages=[{"role": "user", "content": "hi"}],
                ) as stream:
                    await stream.get_final_message()
                return "ok"
            except anthropic.RateLimitError as exc:
                assert exc.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
                return "insufficient_quota"

        try:
            return await race(40, one)
        finally:
            for c in clients:
                await c.close()

    check_race(gov, byok["org"], key, asyncio.run(main()), "anthropic")


def test_ip_rules_and_model_scopes_hold_on_every_route(gov: Services, byok: dict[str, str]) -> None:
    script(gov, "openai")
    script(gov, "anthropic")
    remote = gov.new_key(byok["org"], "remote", "--allow-ip", "203.0.113.0/24")
    with client(gov, remote) as c:
        with pytest.raises(openai.PermissionDeniedError) as err:
            c.embeddings.create(model="openai/text-embedding-3-small", input="x")
        assert err.value.code == "ip_not_allowed"
        with pytest.raises(openai.PermissionDeniedError):
            c.chat.completions.create(model=GPT, messages=[{"role": "user", "content": "x"}])
    with anthropic_client(gov, remote) as a, pytest.raises(anthropic.PermissionDeniedError) as e:
        a.messages.create(
            model="claude-3-5-haiku-latest",
            max_tokens=5,
            messages=[{"role": "user", "content": "x"}],
        )
    assert e.value.body["error"]["type"] == "permission_error"  # type: ignore[index]
    scoped = gov.new_key(byok["org"], "scoped", "--models", GPT)
    with anthropic_client(gov, scoped) as a, pytest.raises(anthropic.PermissionDeniedError):
        a.messages.create(
            model="claude-3-5-haiku-latest",
            max_tokens=5,
            messages=[{"role": "user", "content": "x"}],
        )
    with client(gov, scoped) as c, pytest.raises(openai.PermissionDeniedError) as err:
        c.chat.completions.create(model=CLAUDE, messages=[{"role": "user", "content": "x"}])
    assert err.value.code == "model_not_allowed"
    assert received(gov, "openai") == [] and received(gov, "anthropic") == []
    rows = gov.ledger(byok["org"])
    assert {r["status"] for r in rows} == {"rejected"}
    assert {r["endpoint"] for r in rows} == {
        "/v1/embeddings",
        "/v1/chat/completions",
        "/v1/messages",
    }
