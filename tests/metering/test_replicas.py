"""Several metering replicas over one database and one Redis: shared windows, one expiry per
reservation however many sweepers run, one settlement however many replicas receive it, leases
renewed and ending by themselves, and admissions failing closed when Redis is gone."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from redis.crc import key_slot
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.errors import NotFound, Unavailable
from services.common.grpc_server import start_server, stop_server
from services.metering.ledger import Ledger
from services.metering.plans import Quota
from services.metering.ratelimit import Limits, request_scopes
from services.metering.redis_limits import RedisLimiter, connect
from services.metering.refusals import Refusal
from services.metering.servicer import SERVICE_NAME, add_to_server
from services.pb.metering.v1 import metering_pb2, metering_pb2_grpc
from tests.conftest import RedisSpace
from tests.metering.conftest import TTL_S, FakeClock
from tests.metering.test_admission import admit, settle
from tests.throwaway_redis import RedisServer


@pytest.fixture
async def replicas(
    engine: AsyncEngine, clock: FakeClock, redis_space: RedisSpace
) -> AsyncIterator[tuple[Ledger, Ledger]]:
    """Two ledgers as two replicas: one database, one Redis, one key prefix."""
    ledgers = [
        Ledger(
            engine,
            clock=clock,
            reservation_ttl_s=TTL_S,
            limiter=RedisLimiter(connect(redis_space.url), prefix=redis_space.prefix, clock=clock),
        )
        for _ in range(2)
    ]
    yield ledgers[0], ledgers[1]
    for ledger in ledgers:
        await ledger.aclose()


async def test_both_replicas_count_in_one_window(replicas: tuple[Ledger, Ledger]) -> None:
    a, b = replicas
    quota = Quota(rpm=5, max_concurrent=10)
    results = await asyncio.gather(
        *(admit(a if i % 2 else b, key_quota=quota) for i in range(12)), return_exceptions=True
    )
    admitted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, Refusal)]
    assert (len(admitted), len(refused)) == (5, 7)
    assert sorted(r.rate_limits.remaining_requests for r in admitted) == [0, 1, 2, 3, 4]


async def test_a_reservation_admitted_on_one_replica_settles_on_the_other(
    replicas: tuple[Ledger, Ledger],
) -> None:
    a, b = replicas
    quota = Quota(tpm=1000, max_concurrent=1)
    held = await admit(a, 600, key_quota=quota)
    with pytest.raises(Refusal):
        await admit(b, 10, key_quota=quota)  # the slot is taken, whichever replica asks
    await settle(b, held.reservation_id, 40, 60)
    nxt = await admit(a, 100, key_quota=quota)
    assert nxt.rate_limits.remaining_tokens == 1000 - 100 - 100


async def test_two_sweepers_expire_each_reservation_once(
    replicas: tuple[Ledger, Ledger], clock: FakeClock
) -> None:
    a, b = replicas
    quota = Quota(max_concurrent=50, budget_tokens=10_000, budget_period="day")
    for i in range(20):
        await admit(a if i % 2 else b, 100, key_quota=quota, request_id=f"req_{i}")
    clock.advance(TTL_S)
    done = await asyncio.gather(a.expire_stale(), b.expire_stale(), a.expire_stale())
    assert sum(done) == 20
    records = await a.query_usage(limit=100)
    assert sorted(r.request_id for r in records) == sorted(f"req_{i}" for i in range(20))
    assert {r.status for r in records} == {"expired"}
    (budget,) = await a.get_budgets(org_id="org_1", key_id="key_ab12", key_quota=quota)
    assert (budget.used_tokens, budget.reserved_tokens) == (0, 0)


async def test_concurrent_settles_on_two_replicas_charge_once(
    replicas: tuple[Ledger, Ledger],
) -> None:
    a, b = replicas
    quota = Quota(max_concurrent=1, budget_tokens=1000, budget_period="none")
    held = await admit(a, 500, key_quota=quota)
    first, second = await asyncio.gather(
        settle(a, held.reservation_id, 10, 20), settle(b, held.reservation_id, 10, 20)
    )
    assert first == second
    (budget,) = await a.get_budgets(org_id="org_1", key_id="key_ab12", key_quota=quota)
    assert (budget.used_tokens, budget.reserved_tokens) == (30, 0)
    assert [r.id for r in await b.query_usage()] == [first.id]
    await admit(b, 10, key_quota=quota)  # the slot was released once, and is free


async def test_renewal_keeps_the_reservation_and_its_slot(ledger: Ledger, clock: FakeClock) -> None:
    quota = Quota(max_concurrent=1, budget_tokens=1000, budget_period="none")
    held = await admit(ledger, 400, key_quota=quota)
    assert held.expires_at == clock() + TTL_S
    clock.advance(TTL_S - 1)
    assert await ledger.renew(held.reservation_id) == clock() + TTL_S
    clock.advance(2)  # past the first expiry
    assert await ledger.expire_stale() == 0
    with pytest.raises(Refusal):
        await admit(ledger, 10, key_quota=quota)
    (budget,) = await ledger.get_budgets(org_id="org_1", key_id="key_ab12", key_quota=quota)
    assert budget.reserved_tokens == 400
    await settle(ledger, held.reservation_id, 5, 5)
    with pytest.raises(NotFound) as err:
        await ledger.renew(held.reservation_id)
    assert err.value.code == "reservation_not_open"
    await admit(ledger, 10, key_quota=quota)


async def test_an_expired_reservation_cannot_be_renewed(ledger: Ledger, clock: FakeClock) -> None:
    held = await admit(ledger, key_quota=Quota(max_concurrent=1))
    clock.advance(TTL_S)
    with pytest.raises(NotFound):
        await ledger.renew(held.reservation_id)
    with pytest.raises(NotFound):
        await ledger.renew("res_unknown")


async def test_redis_leases_end_by_themselves(
    replicas: tuple[Ledger, Ledger], clock: FakeClock
) -> None:
    a, _ = replicas
    quota = Quota(max_concurrent=1)
    await admit(a, key_quota=quota)  # its edge dies: never settled, and nobody sweeps
    clock.advance(TTL_S - 1)
    with pytest.raises(Refusal):
        await admit(a, key_quota=quota)
    clock.advance(1)
    await admit(a, key_quota=quota)


def test_every_key_of_one_admission_is_in_one_cluster_slot() -> None:
    limiter = RedisLimiter(connect("redis://127.0.0.1:1"), prefix="sluice")
    scopes = request_scopes("org_9f3", "proj_77", "key_ab12")
    keys = [k for scope, sid in scopes for k in limiter.keys("org_9f3", scope, sid)]
    assert len(keys) == 12
    assert len({key_slot(k.encode()) for k in keys}) == 1
    others = {key_slot(limiter.keys(f"org_{i}", "org", f"org_{i}")[0].encode()) for i in range(50)}
    assert len(others) > 40  # organizations spread over the slots


async def test_admission_fails_closed_while_redis_is_down_and_recovers(
    engine: AsyncEngine, clock: FakeClock, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    ledger = Ledger(
        engine,
        clock=clock,
        reservation_ttl_s=TTL_S,
        limiter=RedisLimiter(connect(server.url, timeout_s=0.5), prefix="t", clock=clock),
    )
    try:
        quota = Quota(rpm=100, max_concurrent=5)
        held = await admit(ledger, key_quota=quota)
        server.stop()
        with pytest.raises(Unavailable) as err:
            await admit(ledger, key_quota=quota)
        assert "rate limits unavailable" in err.value.message
        # Usage is still recorded: the ledger does not depend on Redis.
        record = await settle(ledger, held.reservation_id, 3, 4)
        assert record.total_tokens == 7
        # Without limits nothing needs Redis.
        await admit(ledger, key_id="key_unlimited")
        records = await ledger.query_usage()
        assert "rejected" not in {r.status for r in records}  # an outage is not a refusal
        server.start()
        admitted = await admit(ledger, key_quota=quota)
        assert admitted.rate_limits.remaining_requests == 99  # Redis came back empty
    finally:
        server.stop()
        await ledger.aclose()


async def test_the_servicer_answers_unavailable_when_redis_is_down(
    engine: AsyncEngine, clock: FakeClock
) -> None:
    dead = connect(f"redis://127.0.0.1:{_closed_port()}", timeout_s=0.5)
    ledger = Ledger(engine, clock=clock, limiter=RedisLimiter(dead, clock=clock))
    running = await start_server(
        "127.0.0.1:0", lambda server: add_to_server(server, ledger), [SERVICE_NAME]
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = metering_pb2_grpc.MeteringServiceStub(channel)
            request: Any = metering_pb2.AdmitRequest(
                org_id="o", key_id="k", model="m", upper_bound_tokens=1,
                key_quota=metering_pb2.Quota(rpm=10),
            )  # fmt: skip
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Admit(request)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await stop_server(running, grace_s=0)
        await ledger.aclose()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_redis_keys_expire_after_their_window(redis_space: RedisSpace) -> None:
    limiter = RedisLimiter(connect(redis_space.url), prefix=redis_space.prefix)
    try:
        await limiter.acquire("res_1", "org_1", [Limits("key", "k", "key k", rpm=10)], 5, 5_000)
    finally:
        await limiter.close()
    client = redis.Redis.from_url(redis_space.url)
    try:
        w, t, c = limiter.keys("org_1", "key", "k")
        assert 0 < client.pttl(w) <= 61_000 and 0 < client.pttl(t) <= 61_000
        assert 0 < client.pttl(c) <= 65_000
    finally:
        client.close()


async def test_a_restarted_redis_is_used_again_at_once(
    engine: AsyncEngine, clock: FakeClock, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    ledger = Ledger(
        engine,
        clock=clock,
        reservation_ttl_s=TTL_S,
        limiter=RedisLimiter(connect(server.url, timeout_s=0.5), prefix="t", clock=clock),
    )
    try:
        quota = Quota(rpm=100)
        await asyncio.gather(*(admit(ledger, key_quota=quota) for _ in range(4)))
        server.stop()  # the pool's connections are stale now, and nothing has used them
        server.start()
        results = await asyncio.gather(*(admit(ledger, key_quota=quota) for _ in range(4)))
        assert sorted(r.rate_limits.remaining_requests for r in results) == [96, 97, 98, 99]
    finally:
        server.stop()
        await ledger.aclose()
