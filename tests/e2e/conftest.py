"""The real stack for end-to-end tests: `sluice up` in a subprocess, four service processes,
the exported model, and a real database (SQLite file or a fresh PostgreSQL database)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest
from openai import OpenAI
from sqlalchemy.engine import make_url

from bench import stack as launcher
from tests.conftest import DEFAULT_PG_DSN
from tests.e2e.processes import Services, create_key, run_cli
from tests.e2e.providers import control, provider_secret
from tests.throwaway_redis import RedisServer

ROOT = Path(__file__).resolve().parents[2]
# Short in the fleet, so that a reservation left behind by a killed metering replica (admitted
# there, the answer lost, admitted again elsewhere) is swept within seconds; streams renew theirs.
FLEET_RESERVATION_TTL_S = 8


@dataclass
class Stack:
    """A running `sluice up` (see `bench.stack`) with the conveniences the tests use."""

    run: launcher.Stack
    clients: list[OpenAI] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return self.run.base_url

    @property
    def dev_key(self) -> str:
        return self.run.key

    @property
    def env(self) -> dict[str, str]:
        return self.run.env

    @property
    def output(self) -> list[str]:
        return list(self.run.output)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_cli(self.env, *args, check=check)

    def new_key(self, org: str = "acme", name: str = "test") -> str:
        return create_key(self.env, org, name)

    def client(self, key: str | None = None) -> OpenAI:
        """An SDK client, closed when the stack stops."""
        client = OpenAI(base_url=self.base_url, api_key=key or self.dev_key, max_retries=0)
        self.clients.append(client)
        return client


def start_stack(database_url: str, tmp: Path, **extra_env: str) -> Stack:
    run = launcher.start_stack(
        tmp,
        max_batch=int(extra_env.pop("SLUICE_ENGINE_MAX_BATCH", "8")),
        database_url=database_url,
        extra_env=extra_env,
        keep_lines=None,
    )
    assert re.fullmatch(r"sk-sluice-\S+", run.key)
    return Stack(run)


def stop_stack(stack: Stack) -> None:
    for client in stack.clients:
        client.close()
    launcher.stop_stack(stack.run)


def create_pg_database(dsn: str) -> tuple[str, Callable[[], None]]:
    """A fresh database on the test server, and a function that drops it."""
    name = f"sluice_e2e_{uuid.uuid4().hex[:12]}"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    try:
        asyncio.run(run(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        pytest.fail(f"PostgreSQL is not reachable at {dsn}: {exc}", pytrace=False)
    url = make_url(dsn).set(drivername="postgresql+asyncpg", database=name)
    return url.render_as_string(hide_password=False), lambda: asyncio.run(
        run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    )


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp(f"stack-{request.param}")
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp / 'sluice.db'}"
        drop = None
    else:
        url, drop = create_pg_database(os.environ.get("SLUICE_TEST_PG_DSN", DEFAULT_PG_DSN))
    s = start_stack(url, tmp)
    try:
        yield s
    finally:
        stop_stack(s)
        if drop:
            drop()


@pytest.fixture(scope="session")
def gov(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """The governance stack on PostgreSQL: auth, metering, engine and two edges (IPv4 loopback
    and IPv6 loopback) sharing them; 127.0.0.2 is the one trusted proxy."""
    env = {
        "SLUICE_TRUSTED_PROXIES": "127.0.0.2/32",
        # The upstream providers are loopback stand-ins speaking their wire formats.
        "SLUICE_UPSTREAM_MAX_RETRIES": "2",
    }
    with services_on_postgres(
        tmp_path_factory.mktemp("gov"), env, {"edge": "127.0.0.1", "edge-b": "::1"}, fakes=True
    ) as services:
        yield services


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The fleet's own Redis (a test stops and restarts it)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer
) -> Iterator[Services]:
    """Replicas of everything on PostgreSQL and Redis: auth, two meterings sharing the
    rate-limit windows in Redis, two engines, and two edges pointed at both of each."""
    env = {
        "SLUICE_REDIS_URL": redis_server.url,
        "SLUICE_REDIS_TIMEOUT_S": "0.5",
        "SLUICE_RESERVATION_TTL_S": str(FLEET_RESERVATION_TTL_S),
    }
    with services_on_postgres(
        tmp_path_factory.mktemp("fleet"),
        env,
        {"edge": "127.0.0.1", "edge-b": "127.0.0.1"},
        replicas={"metering": 2, "engine": 2},
    ) as services:
        yield services


@contextmanager
def services_on_postgres(
    tmp: Path,
    extra_env: Mapping[str, str],
    edges: Mapping[str, str] = {"edge": "127.0.0.1"},
    fakes: bool = False,
    replicas: Mapping[str, int] = {},
) -> Iterator[Services]:
    """The services as separate processes over a fresh PostgreSQL database, dropped after;
    `replicas` as for `Services.start_all`."""
    url, drop = create_pg_database(os.environ.get("SLUICE_TEST_PG_DSN", DEFAULT_PG_DSN))
    services = Services.create(tmp, url, extra_env)
    try:
        if fakes:
            services.start_fakes()
        services.start_all(edges, replicas)
        yield services
    finally:
        services.stop_all()
        drop()


@pytest.fixture
def org(request: pytest.FixtureRequest) -> str:
    """A fresh organization name per test, so tests never share limits or budgets."""
    return f"org-{request.node.name[:40]}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def byok(gov: Services, org: str) -> Iterator[dict[str, str]]:
    """An organization with both providers' credentials and a key; yields names and secrets."""
    secrets = {p: provider_secret(p) for p in ("openai", "anthropic")}
    gov.cli("orgs", "create", org)
    for provider, secret in secrets.items():
        gov.cli("providers", "add", "--org", org, "--provider", provider, "--api-key", secret)
    yield {"org": org, "key": gov.new_key(org, "byok"), **secrets}
    for provider in ("openai", "anthropic"):
        control(gov, provider, "POST", "/_control/reset")
