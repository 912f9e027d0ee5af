"""Outages with real processes, and what the ledger says after them:

- kill -9 of a metering replica and an engine under steady load (the `fleet` stack): requests
  that had no output yet are served by the survivors, every request has its record, budgets are
  exact once the killed metering's reservations are swept;
- metering stopped for 30 seconds under load, the edge restarted meanwhile: every request
  admitted before the outage and finished during it has its record afterwards, exactly once;
- SIGTERM to `sluice up` during 8 streams: each ends with `[DONE]` or, past the grace period,
  an error event, and the ledger holds each with the tokens its client received.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from openai import OpenAI

from tests.conftest import DEFAULT_PG_DSN
from tests.e2e.conftest import (
    FLEET_RESERVATION_TTL_S,
    create_pg_database,
    services_on_postgres,
    start_stack,
    stop_stack,
)
from tests.e2e.processes import Services
from tests.e2e.streams import Streamed, stream_chat

OUTAGE_S = 30.0
SUBJECT = "Count from 1 to 1000, separated by spaces."
# A prompt this model answers at length (to its max_tokens, not its end of text).
LONG = "Write a very long story about a river, at least 5000 words."


def key_budget(services: Services, key: str) -> dict[str, Any]:
    with OpenAI(base_url=services.edges["edge"].base_url, api_key=key, max_retries=0) as client:
        page = client.get("/usage/budgets", cast_to=object)
    assert isinstance(page, dict)
    (budget,) = [b for b in page["data"] if b["scope"] == "key"]
    return dict(budget)


def metric(services: Services, edge: str, name: str) -> float:
    text = httpx.get(services.edges[edge].base_url.removesuffix("/v1") + "/metrics").text
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def failovers(services: Services, edge: str) -> float:
    text = httpx.get(services.edges[edge].base_url.removesuffix("/v1") + "/metrics").text
    lines = [line for line in text.splitlines() if line.startswith("sluice_engine_failovers_total")]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


def wait_for(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout_s:.0f}s")
        time.sleep(0.5)


def tokens(record: dict[str, Any]) -> int:
    return int(record["prompt_tokens"]) + int(record["completion_tokens"])


def check_billed_as_received(stream: Streamed, record: dict[str, Any]) -> None:
    """The record charges what the client received: the usage it was shown, or, for a stream
    ended by an error after output, the tokens it was sent."""
    if stream.done:
        assert record["status"] == "ok"
        assert stream.usage is not None and tokens(record) == stream.usage["total_tokens"]
    else:
        assert record["status"] == "error"
        assert int(record["completion_tokens"]) == stream.content_chunks


# -- kill -9 under load (fleet) ---------------------------------------------------------------


WORKERS = 6
BURST = 10
FROZEN_S = 1.5


async def _load_through_kills(services: Services, key: str) -> list[Streamed]:
    """Workers asking one short stream after another through both edges while an engine and
    then a metering replica are frozen for a moment and killed -9. Freezing first makes sure
    calls are in flight on them when they die: requests the engine took but had not answered
    (a burst sent while it is frozen, so that some reach it whatever its load), admissions and
    settlements on the metering."""
    bases = [services.edges["edge"].base_url, services.edges["edge-b"].base_url]
    results: list[Streamed] = []
    running = True

    async def worker(i: int, client: httpx.AsyncClient) -> None:
        while running:
            base = bases[i % len(bases)]
            results.append(await stream_chat(client, base, key, prompt=SUBJECT, max_tokens=12))

    def freeze(name: str) -> None:
        services.procs[name].send_signal(signal.SIGSTOP)

    def kill(name: str) -> None:
        services.stop(name, signal.SIGKILL)

    async with httpx.AsyncClient(timeout=120) as client:
        workers = [asyncio.create_task(worker(i, client)) for i in range(WORKERS)]
        await asyncio.sleep(2.0)
        freeze("engine-b")
        burst = [
            asyncio.create_task(
                stream_chat(client, bases[i % 2], key, prompt=SUBJECT, max_tokens=12)
            )
            for i in range(BURST)
        ]
        await asyncio.sleep(FROZEN_S)
        await asyncio.to_thread(kill, "engine-b")
        freeze("metering-b")
        await asyncio.sleep(FROZEN_S)
        await asyncio.to_thread(kill, "metering-b")
        await asyncio.sleep(2.0)
        running = False
        results.extend(await asyncio.gather(*burst))
        await asyncio.gather(*workers)
    return results


def test_kill_9_of_a_metering_and_an_engine_under_load(fleet: Services, org: str) -> None:
    key = fleet.new_key(org, "load", "--budget-tokens", "10000000", "--budget-period", "month")
    try:
        results = asyncio.run(_load_through_kills(fleet, key))
    finally:
        fleet.start("metering-b")
        fleet.start("engine-b")
    outcomes = Counter(r.outcome for r in results)
    # Only a stream already under way on the killed engine may fail, with an error event after
    # its output; everything else was served, by the survivors after the kill.
    assert set(outcomes) <= {"done", "error_after_output"}, [
        (r.status, r.body or r.error) for r in results if r.outcome not in ("done",)
    ]
    assert outcomes["error_after_output"] <= WORKERS
    # Requests the frozen engine held without output went to the other one.
    assert sum(failovers(fleet, edge) for edge in ("edge", "edge-b")) > 0
    ledger = fleet.ledger(org)
    by_request: dict[str, list[dict[str, Any]]] = {}
    for record in ledger:
        by_request.setdefault(record["request_id"], []).append(record)
    for stream in results:
        # An admission retried after the kill may have left an unsettled reservation on the
        # killed replica: swept later as "expired", with nothing charged.
        (record,) = [r for r in by_request[stream.request_id] if r["status"] != "expired"]
        check_billed_as_received(stream, record)
    assert len(by_request) == len(results)
    assert all(tokens(r) == 0 for r in ledger if r["status"] == "expired")

    # Exact budgets: what was charged is the ledger, and nothing stays held once the sweeper
    # released what the killed replica had admitted (SLUICE_RESERVATION_TTL_S in this stack).
    def settled() -> bool:
        return int(key_budget(fleet, key)["reserved_tokens"]) == 0

    wait_for(settled, 3 * FLEET_RESERVATION_TTL_S + 30, "released")
    budget = key_budget(fleet, key)
    assert int(budget["used_tokens"]) == sum(tokens(r) for r in fleet.ledger(org))


# -- metering away for 30 seconds ------------------------------------------------------------


@pytest.fixture(scope="module")
def lonely(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """One of each service on PostgreSQL, the metering of which the test stops; short drains so
    that stopping takes little time."""
    env = {"SLUICE_DRAIN_DELAY_S": "0.2", "SLUICE_DRAIN_GRACE_S": "5"}
    with services_on_postgres(tmp_path_factory.mktemp("outage"), env) as services:
        yield services


async def _streams_across_an_outage(svc: Services, key: str) -> tuple[list[Streamed], Streamed]:
    base = svc.edges["edge"].base_url
    async with httpx.AsyncClient(timeout=300) as client:
        streams = [Streamed() for _ in range(4)]
        tasks = [
            asyncio.create_task(stream_chat(client, base, key, max_tokens=160, into=s))
            for s in streams
        ]
        for s in streams:
            await s.started.wait()
        assert all(s.content_chunks for s in streams), [s.body for s in streams]
        # Admitted and generating: now metering goes away.
        await asyncio.to_thread(svc.stop, "metering")
        refused = await stream_chat(client, base, key, max_tokens=4)
        finished = list(await asyncio.gather(*tasks))
    return finished, refused


def test_metering_away_for_30_seconds_loses_no_record(lonely: Services, org: str) -> None:
    key = lonely.new_key(org, "outage", "--budget-tokens", "1000000", "--budget-period", "month")
    stopped_at = 0.0
    try:
        streams, refused = asyncio.run(_streams_across_an_outage(lonely, key))
        stopped_at = time.monotonic()
        # The streams ended during the outage, each with its [DONE]: their settlements wait in
        # the edge's outbox, which a restart of the edge does not lose.
        assert [s.outcome for s in streams] == ["done"] * 4
        assert refused.status == 503  # no new work without governance
        assert metric(lonely, "edge", "sluice_settlements_kept") == 4  # pending
        lonely.stop("edge")
        lonely.start("edge")
        assert metric(lonely, "edge", "sluice_settlements_kept") == 4
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped_at)))
    finally:
        lonely.start("metering")
    wait_for(lambda: metric(lonely, "edge", "sluice_settlements_kept") == 0, 60, "delivered")
    ledger = lonely.ledger(org)
    assert Counter(r["request_id"] for r in ledger) == Counter(s.request_id for s in streams)
    for stream in streams:
        (record,) = [r for r in ledger if r["request_id"] == stream.request_id]
        check_billed_as_received(stream, record)
    budget = key_budget(lonely, key)
    assert int(budget["reserved_tokens"]) == 0
    assert int(budget["used_tokens"]) == sum(tokens(r) for r in ledger)


# -- SIGTERM to `sluice up` -------------------------------------------------------------------


async def _streams_then_sigterm(base: str, key: str, proc: Any) -> list[Streamed]:
    async with httpx.AsyncClient(timeout=300) as client:
        # Four that finish well within the grace period, four that cannot.
        streams = [Streamed() for _ in range(8)]
        tasks = [
            asyncio.create_task(
                stream_chat(
                    client,
                    base,
                    key,
                    prompt=SUBJECT if i < 4 else LONG,
                    max_tokens=8 if i < 4 else 2000,
                    into=s,
                )
            )
            for i, s in enumerate(streams)
        ]
        for s in streams:
            await s.started.wait()
        assert all(s.content_chunks for s in streams), [s.body for s in streams]
        proc.send_signal(signal.SIGTERM)
        return list(await asyncio.gather(*tasks))


async def _records(dsn: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT request_id, status, prompt_tokens, completion_tokens FROM usage_records"
        )
    finally:
        await conn.close()
    return [dict(r) for r in rows]


def test_sigterm_to_sluice_up_during_8_streams(tmp_path: Path) -> None:
    url, drop = create_pg_database(os.environ.get("SLUICE_TEST_PG_DSN", DEFAULT_PG_DSN))
    try:
        stack = start_stack(url, tmp_path, SLUICE_DRAIN_DELAY_S="0.5", SLUICE_DRAIN_GRACE_S="4")
        try:
            run = _streams_then_sigterm(stack.base_url, stack.dev_key, stack.run.proc)
            streams = asyncio.run(run)
            assert stack.run.proc.wait(timeout=60) == 0
        finally:
            stop_stack(stack)
        outcomes = [s.outcome for s in streams]
        assert set(outcomes) == {"done", "error_after_output"}, [
            (s.outcome, s.content_chunks, s.usage) for s in streams
        ]
        for s in streams:
            if not s.done:
                assert s.error is not None and s.error["code"] == "server_shutting_down"
        # Everything settled before the edge exited, with metering still up behind it.
        records = asyncio.run(_records(url.replace("postgresql+asyncpg://", "postgresql://")))
        assert Counter(r["request_id"] for r in records) == Counter(s.request_id for s in streams)
        for s in streams:
            (record,) = [r for r in records if r["request_id"] == s.request_id]
            check_billed_as_received(s, record)
        cut = outcomes.count("error_after_output")
        assert f"drain deadline: ended {cut} stream(s) still running" in stack.run.logs()
    finally:
        drop()
