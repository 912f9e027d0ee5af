"""A migrated metering schema, a `Ledger` on a fake clock and its gRPC server, on each database
of `db_url`."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.db import create_engine, migrate
from services.common.grpc_server import start_server, stop_server
from services.metering.ledger import Ledger
from services.metering.main import MIGRATIONS, VERSION_TABLE
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


@pytest.fixture
def ledger(engine: AsyncEngine, clock: FakeClock) -> Iterator[Ledger]:
    ledger = Ledger(engine, clock=clock, reservation_ttl_s=TTL_S)
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
