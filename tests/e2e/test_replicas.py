"""Two edges, two metering replicas and two engines over one PostgreSQL and one Redis (the
`fleet` stack): the budget race never overshoots, an RPM limit holds across every replica, and
when Redis goes away admissions fail closed (503) until it is back. test_rate_limits runs its
limits on this stack too."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from tests.e2e.processes import Services
from tests.e2e.test_budgets import BUDGET, budgets, race
from tests.throwaway_redis import RedisServer

MODEL = "smollm2-135m-instruct"
MESSAGES = [{"role": "user", "content": "hi"}]


def test_every_service_runs_as_replicas(fleet: Services) -> None:
    assert {"metering", "metering-b", "engine", "engine-b", "edge", "edge-b"} <= set(fleet.procs)
    assert all(proc.poll() is None for proc in fleet.procs.values())
    for var in ("SLUICE_METERING_ADDR", "SLUICE_ENGINE_ADDR"):
        assert len(fleet.env[var].split(",")) == 2  # what the edges were started with


def test_budget_race_over_two_edges_and_two_meterings_never_overshoots(
    fleet: Services, org: str
) -> None:
    key = fleet.new_key(org, "racer", "--budget-tokens", str(BUDGET), "--budget-period", "month")
    bases = [fleet.edges["edge"].base_url, fleet.edges["edge-b"].base_url]
    results = asyncio.run(race(bases, key, 60))

    served = [tokens for outcome, tokens in results if outcome == "ok"]
    refused = [outcome for outcome, _ in results if outcome != "ok"]
    assert served and refused
    assert set(refused) == {"refused:insufficient_quota"}
    ledger = fleet.ledger(org)
    ledger_total = sum(int(r["prompt_tokens"]) + int(r["completion_tokens"]) for r in ledger)
    assert ledger_total == sum(served) <= BUDGET
    assert sum(r["status"] == "ok" for r in ledger) == len(served)
    assert sum(r["status"] == "rejected" for r in ledger) == len(refused)
    (key_budget,) = [b for b in budgets(fleet, key) if b["scope"] == "key"]
    assert int(str(key_budget["used_tokens"])) == ledger_total
    assert int(str(key_budget["reserved_tokens"])) == 0


async def _one(client: AsyncOpenAI) -> str:
    try:
        await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)
        return "ok"
    except openai.RateLimitError as exc:
        return f"refused:{exc.code}"


async def _burst(bases: list[str], key: str, n: int) -> list[str]:
    clients = [AsyncOpenAI(base_url=b, api_key=key, max_retries=0, timeout=120) for b in bases]
    try:
        return await asyncio.gather(*(_one(clients[i % len(clients)]) for i in range(n)))
    finally:
        for client in clients:
            await client.close()


def test_an_rpm_of_5_admits_exactly_5_across_every_replica(fleet: Services, org: str) -> None:
    key = fleet.new_key(org, "rpm", "--rpm", "5")
    bases = [fleet.edges["edge"].base_url, fleet.edges["edge-b"].base_url]
    outcomes = asyncio.run(_burst(bases, key, 16))
    assert outcomes.count("ok") == 5
    assert outcomes.count("refused:rate_limit_exceeded") == 11
    statuses = [r["status"] for r in fleet.ledger(org)]
    assert (statuses.count("ok"), statuses.count("rejected")) == (5, 11)


def test_admissions_fail_closed_while_redis_is_down_then_recover(
    fleet: Services, redis_server: RedisServer, org: str
) -> None:
    key = fleet.new_key(org, "limited", "--rpm", "100")
    with OpenAI(base_url=fleet.edges["edge"].base_url, api_key=key, max_retries=0) as client:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)
        redis_server.stop()
        try:
            for base in (fleet.edges["edge"].base_url, fleet.edges["edge-b"].base_url):
                with (
                    OpenAI(base_url=base, api_key=key, max_retries=0) as other,
                    pytest.raises(openai.APIStatusError) as err,
                ):
                    other.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)
                assert err.value.status_code == 503
        finally:
            redis_server.start()
        resp = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=MESSAGES, max_tokens=1
        )
    assert resp.status_code == 200
    # Redis came back empty: the window starts again.
    assert resp.headers["x-ratelimit-remaining-requests"] == "99"
    statuses = [r["status"] for r in fleet.ledger(org)]
    assert statuses == ["ok", "ok"]  # the outage refused nothing on the key's behalf


async def _stream(client: AsyncOpenAI) -> tuple[str, int]:
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count to twenty."}],
        max_tokens=48,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    finish, total = "", 0
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
        if chunk.usage:
            total = chunk.usage.total_tokens
    return finish, total


async def _streams_while(bases: list[str], key: str, n: int, during: Any) -> list[Any]:
    clients = [AsyncOpenAI(base_url=b, api_key=key, max_retries=0, timeout=300) for b in bases]
    try:
        streams = [asyncio.create_task(_stream(clients[i % len(clients)])) for i in range(n)]
        await asyncio.sleep(1.0)  # under way on both engines
        await asyncio.to_thread(during)
        # New requests while the replicas drain go to the ones still serving.
        more = [asyncio.create_task(_stream(clients[i % len(clients)])) for i in range(n)]
        return list(await asyncio.gather(*streams, *more, return_exceptions=True))
    finally:
        for client in clients:
            await client.close()


def test_sigterm_drains_an_engine_and_a_metering_without_failing_a_request(
    fleet: Services, org: str
) -> None:
    key = fleet.new_key(org, "drain")
    bases = [fleet.edges["edge"].base_url, fleet.edges["edge-b"].base_url]

    def drain() -> None:
        fleet.stop("engine-b")  # SIGTERM, and wait for it to exit
        fleet.stop("metering-b")

    try:
        results = asyncio.run(_streams_while(bases, key, 6, drain))
    finally:
        fleet.start("engine-b")
        fleet.start("metering-b")
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, failures
    assert all(finish in ("stop", "length") and total > 0 for finish, total in results)
    ledger = fleet.ledger(org)
    assert sorted(int(r["prompt_tokens"]) + int(r["completion_tokens"]) for r in ledger) == sorted(
        total for _, total in results
    )
    assert {r["status"] for r in ledger} == {"ok"}
    for name in ("engine-b", "metering-b"):
        assert fleet.procs[name].poll() is None
