"""A migrated metering schema, a `Ledger` and its gRPC server, on each database of `db_url`."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.db import create_engine, migrate
from services.common.grpc_server import start_server, stop_server
from services.metering.ledger import Ledger
from services.metering.main import MIGRATIONS, VERSION_TABLE
from services.metering.servicer import SERVICE_NAME, add_to_server


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(db_url)
    try:
        await migrate(engine, MIGRATIONS, VERSION_TABLE)
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def ledger(engine: AsyncEngine) -> Ledger:
    return Ledger(engine)


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
