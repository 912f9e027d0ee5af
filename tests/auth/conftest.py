"""A migrated auth schema, the auth stores with a controllable clock, and the gRPC server, on
each database of `db_url`."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.auth.main import MIGRATIONS, VERSION_TABLE
from services.auth.providers import ProviderStore
from services.auth.servicer import SERVICE_NAME, add_to_server
from services.auth.store import KeyStore
from services.common.db import create_engine, migrate
from services.common.grpc_server import start_server, stop_server
from services.common.sqltypes import utcnow

SERVER_SECRET = b"test-server-secret"
DATA_KEY = bytes(range(32))


class Clock:
    """Real time plus an offset that tests move forward, so order by time still holds."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return utcnow() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(db_url)
    try:
        await migrate(engine, MIGRATIONS, VERSION_TABLE)
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def store(engine: AsyncEngine, clock: Clock) -> KeyStore:
    return KeyStore(engine, SERVER_SECRET, clock=clock)


@pytest.fixture
def providers(engine: AsyncEngine, clock: Clock) -> ProviderStore:
    return ProviderStore(engine, DATA_KEY, clock=clock)


@pytest.fixture
async def auth_addr(store: KeyStore, providers: ProviderStore) -> AsyncIterator[str]:
    """The real auth gRPC server (interceptor, health) in-process on a free port."""
    register = functools.partial(add_to_server, store=store, providers=providers)
    running = await start_server("127.0.0.1:0", register, [SERVICE_NAME])
    try:
        yield f"127.0.0.1:{running.port}"
    finally:
        await stop_server(running, grace_s=0)
