"""Fixtures shared by the service tests: a SQLite file, a throwaway PostgreSQL database, and a
Redis key prefix of the test's own.

PostgreSQL and Redis tests fail (they do not skip) when the server is unreachable: `make test`
starts both, and a silently skipped half of the suite would hide bugs.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import redis
from redis.exceptions import RedisError
from sqlalchemy.engine import make_url

DEFAULT_PG_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def test_redis_url() -> str:
    """The Redis the tests use (shared with others: every test keeps to its own key prefix)."""
    return os.environ.get("SLUICE_TEST_REDIS_URL", DEFAULT_REDIS_URL)


test_redis_url.__test__ = False  # type: ignore[attr-defined]


@dataclass(frozen=True)
class RedisSpace:
    """A Redis URL and a key prefix no other test uses; its keys are deleted after the test."""

    url: str
    prefix: str


@pytest.fixture
def redis_space() -> Iterator[RedisSpace]:
    url = test_redis_url()
    prefix = f"sluice-test-{uuid.uuid4().hex[:12]}"
    client = redis.Redis.from_url(url, socket_connect_timeout=5)
    try:
        client.ping()
    except (RedisError, OSError) as exc:
        client.close()
        pytest.fail(
            f"Redis is not reachable at {url} ({exc.__class__.__name__}: {exc}). Start it "
            "(`make test` does, with scripts/ensure_redis.sh) or point SLUICE_TEST_REDIS_URL "
            "at a server.",
            pytrace=False,
        )
    try:
        yield RedisSpace(url, prefix)
    finally:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


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
