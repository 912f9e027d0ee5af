"""A migrated auth schema, a `KeyStore` and its gRPC server, on each database of `db_url`."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.auth.main import MIGRATIONS, VERSION_TABLE
from services.auth.servicer import SERVICE_NAME, add_to_server
from services.auth.store import KeyStore
from services.common.db import create_engine, migrate
from services.common.grpc_server import start_server, stop_server

SERVER_SECRET = b"test-server-secret"


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(db_url)
    try:
        await migrate(engine, MIGRATIONS, VERSION_TABLE)
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def store(engine: AsyncEngine) -> KeyStore:
    return KeyStore(engine, SERVER_SECRET)


@pytest.fixture
async def auth_addr(store: KeyStore) -> AsyncIterator[str]:
    """The real auth gRPC server (interceptor, health) in-process on a free port."""
    running = await start_server(
        "127.0.0.1:0", functools.partial(add_to_server, store=store), [SERVICE_NAME]
    )
    try:
        yield f"127.0.0.1:{running.port}"
    finally:
        await stop_server(running, grace_s=0)
