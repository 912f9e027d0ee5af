"""Token budgets through the running stack: a race of 100 streaming requests over two edges against
a budget that admits only a few, and budgets per project and per organization."""

from __future__ import annotations

import asyncio

import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from tests.e2e.processes import Services

MODEL = "smollm2-135m-instruct"
MESSAGES = [{"role": "user", "content": "Count to ten."}]
BUDGET = 600


async def one_stream(client: AsyncOpenAI) -> tuple[str, int]:
    """("ok", tokens) for a finished stream, or ("refused:<code>", 0)."""
    try:
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            max_tokens=24,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        total = 0
        async for chunk in stream:
            if chunk.usage:
                total = chunk.usage.total_tokens
        return "ok", total
    except openai.RateLimitError as exc:
        return f"refused:{exc.code}", 0


async def race(bases: list[str], key: str, n: int) -> list[tuple[str, int]]:
    clients = [AsyncOpenAI(base_url=b, api_key=key, max_retries=0, timeout=300) for b in bases]
    try:
        return await asyncio.gather(*(one_stream(clients[i % len(clients)]) for i in range(n)))
    finally:
        for c in clients:
            await c.close()


def budgets(gov: Services, key: str) -> list[dict[str, object]]:
    with OpenAI(base_url=gov.edges["edge"].base_url, api_key=key, max_retries=0) as client:
        resp = client.get("/usage/budgets", cast_to=object)
    assert isinstance(resp, dict)
    data: list[dict[str, object]] = resp["data"]
    return data


def test_budget_race_over_two_edges_never_overshoots(gov: Services, org: str) -> None:
    key = gov.new_key(org, "racer", "--budget-tokens", str(BUDGET), "--budget-period", "month")
    bases = [gov.edges["edge"].base_url, gov.edges["edge-b"].base_url]
    results = asyncio.run(race(bases, key, 100))

    served = [tokens for outcome, tokens in results if outcome == "ok"]
    refused = [outcome for outcome, _ in results if outcome != "ok"]
    assert served, "the budget admits a few requests"
    assert refused, "and refuses the rest"
    assert set(refused) == {"refused:insufficient_quota"}
    assert sum(served) <= BUDGET

    ledger = gov.ledger(org)
    ok_rows = [r for r in ledger if r["status"] == "ok"]
    assert len(ok_rows) == len(served)
    ledger_total = sum(int(r["prompt_tokens"]) + int(r["completion_tokens"]) for r in ledger)
    assert ledger_total == sum(served) <= BUDGET
    # Refusals are in the ledger too.
    assert sum(r["status"] == "rejected" for r in ledger) == len(refused)

    (key_budget,) = [b for b in budgets(gov, key) if b["scope"] == "key"]
    assert int(str(key_budget["limit_tokens"])) == BUDGET
    assert int(str(key_budget["used_tokens"])) == ledger_total
    assert int(str(key_budget["reserved_tokens"])) == 0


def test_project_and_org_budgets_refuse_with_insufficient_quota(gov: Services, org: str) -> None:
    gov.cli("orgs", "create", org)
    gov.cli(
        "projects", "create", "--org", org, "--name", "small",
        "--budget-tokens", "150", "--budget-period", "day",
    )  # fmt: skip
    key = gov.new_key(org, "in-small", "--project", "small")
    with OpenAI(base_url=gov.edges["edge"].base_url, api_key=key, max_retries=0) as client:

        def ask() -> None:
            client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)

        with pytest.raises(openai.RateLimitError) as err:
            for _ in range(10):
                ask()
    assert err.value.code == "insufficient_quota"
    assert err.value.type == "insufficient_quota"

    other = gov.new_key(org, "in-default")  # another project: its budget does not apply
    gov.cli("orgs", "set-limits", org, "--budget-tokens", "1", "--budget-period", "none")
    with (
        OpenAI(base_url=gov.edges["edge"].base_url, api_key=other, max_retries=0) as client,
        pytest.raises(openai.RateLimitError) as err,
    ):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
    assert err.value.code == "insufficient_quota"
