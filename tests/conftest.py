"""Database fixtures shared by the service tests: a SQLite file and a throwaway PostgreSQL database.

PostgreSQL tests fail (they do not skip) when the server is unreachable: `make test` starts it,
and a silently skipped half of the suite would hide dialect bugs.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

DEFAULT_PG_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'sluice.db'}"


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    dsn = os.environ.get("SLUICE_TEST_PG_DSN", DEFAULT_PG_DSN)
    name = f"sluice_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = await asyncpg.connect(dsn, timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {dsn} ({exc.__class__.__name__}: {exc}). "
            "Start it (`make test` does, or `pg_ctlcluster 15 main start`) or point "
            "SLUICE_TEST_PG_DSN at a server with trust auth.",
            pytrace=False,
        )
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = make_url(dsn).set(drivername="postgresql+asyncpg", database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        admin = await asyncpg.connect(dsn, timeout=5)
        try:
            # FORCE: a test that failed half-way may still hold connections.
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """Each test that takes it runs once on SQLite and once on PostgreSQL."""
    fixture = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return request.getfixturevalue(fixture)
