"""A migrated metering schema, a `Ledger` on a fake clock and its gRPC server, on each database
of `db_url` and with each rate limiter (in memory, and in Redis)."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.db import create_engine, migrate
from services.common.grpc_server import start_server, stop_server
from services.metering.ledger import Ledger
from services.metering.main import MIGRATIONS, VERSION_TABLE
from services.metering.memory_limits import MemoryLimiter
from services.metering.ratelimit import Limiter
from services.metering.redis_limits import RedisLimiter, connect
from services.metering.servicer import SERVICE_NAME, add_to_server

# 2025-03-14 12:00:00 UTC: mid-day, mid-month, so period boundaries are far unless a test moves.
START = 1_741_953_600.0
TTL_S = 900.0


class FakeClock:
    """Unix seconds that move only when a test says so."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(db_url)
    try:
        await migrate(engine, MIGRATIONS, VERSION_TABLE)
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture(params=["memory", "redis"])
async def make_limiter(
    request: pytest.FixtureRequest, clock: FakeClock
) -> AsyncIterator[Callable[[], Limiter]]:
    """Builds limiters of one kind on the test's clock. Redis ones share the test's key prefix,
    as the replicas of one deployment do."""
    made: list[Limiter] = []
    space = request.getfixturevalue("redis_space") if request.param == "redis" else None

    def make() -> Limiter:
        if space is None:
            limiter: Limiter = MemoryLimiter(clock)
        else:
            limiter = RedisLimiter(connect(space.url), prefix=space.prefix, clock=clock)
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        await limiter.close()


@pytest.fixture
def limiter(make_limiter: Callable[[], Limiter]) -> Limiter:
    return make_limiter()


@pytest.fixture
def ledger(engine: AsyncEngine, clock: FakeClock, limiter: Limiter) -> Iterator[Ledger]:
    ledger = Ledger(engine, clock=clock, reservation_ttl_s=TTL_S, limiter=limiter)
    yield ledger
    ledger.close()


@pytest.fixture
async def metering_addr(ledger: Ledger) -> AsyncIterator[str]:
    """The real metering gRPC server (interceptor, health) in-process on a free port."""
    running = await start_server(
        "127.0.0.1:0", functools.partial(add_to_server, ledger=ledger), [SERVICE_NAME]
    )
    try:
        yield f"127.0.0.1:{running.port}"
    finally:
        await stop_server(running, grace_s=0)
