"""The real stack for end-to-end tests: `sluice up` in a subprocess, four service processes,
the exported model, and a real database (SQLite file or a fresh PostgreSQL database)."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest
from openai import OpenAI
from sqlalchemy.engine import make_url

from tests.conftest import DEFAULT_PG_DSN

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Stack:
    env: dict[str, str]
    base_url: str
    data_dir: Path
    proc: subprocess.Popen[str]
    dev_key: str
    output: list[str] = field(default_factory=list)
    clients: list[OpenAI] = field(default_factory=list)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "services.cli", *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=check,
            timeout=60,
        )

    def new_key(self, org: str = "acme", name: str = "test") -> str:
        out = self.cli("keys", "create", "--org", org, "--name", name).stdout
        return out.strip().splitlines()[-1]

    def client(self, key: str | None = None, **kwargs: object) -> OpenAI:
        return OpenAI(base_url=self.base_url, api_key=key or self.dev_key, max_retries=0, **kwargs)  # type: ignore[arg-type]

    def logs(self) -> str:
        return "".join(self.output)


def start_stack(database_url: str, tmp: Path, **extra_env: str) -> Stack:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    ports = {name: free_port() for name in ("auth", "metering", "engine", "edge")}
    env.update(
        SLUICE_DATA_DIR=str(tmp / "var"),
        SLUICE_DATABASE_URL=database_url,
        SLUICE_MODELS_DIR=str(ROOT / "models"),
        SLUICE_AUTH_ADDR=f"127.0.0.1:{ports['auth']}",
        SLUICE_METERING_ADDR=f"127.0.0.1:{ports['metering']}",
        SLUICE_ENGINE_ADDR=f"127.0.0.1:{ports['engine']}",
        SLUICE_EDGE_PORT=str(ports["edge"]),
        SLUICE_ENGINE_MAX_BATCH="8",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra_env)
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            if line.startswith("sk-sluice-"):
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(START_TIMEOUT_S) or proc.poll() is not None:
        proc.kill()
        raise RuntimeError("stack did not start:\n" + "".join(output))
    key = next(line.strip() for line in output if line.startswith("sk-sluice-"))
    assert re.fullmatch(r"sk-sluice-\S+", key)
    base = f"http://127.0.0.1:{ports['edge']}/v1"
    stack = Stack(env, base, tmp / "var", proc, key, output)
    return stack


def stop_stack(stack: Stack) -> None:
    for client in stack.clients:
        client.close()
    stack.proc.terminate()
    try:
        stack.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        stack.proc.kill()
        stack.proc.wait()
    if stack.proc.stdout is not None:
        stack.proc.stdout.close()


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
