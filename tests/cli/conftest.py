"""Both services in-process over one SQLite file (as `sluice up` runs them), and a CLI runner.

The CLI makes blocking gRPC calls, so commands run in a worker thread while the servers keep
the event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from services.auth import main as auth_main
from services.auth.servicer import add_to_server as add_auth
from services.auth.store import KeyStore
from services.cli import keys, usage
from services.common.db import create_engine, migrate
from services.common.grpc_server import start_server, stop_server
from services.common.settings import Settings
from services.metering import main as metering_main
from services.metering.ledger import Ledger
from services.metering.servicer import add_to_server as add_metering

Runner = Callable[..., Awaitable[int]]


def parser() -> argparse.ArgumentParser:
    """The `sluice` parser as `services.cli.main` assembles it, limited to these commands."""
    p = argparse.ArgumentParser(prog="sluice")
    sub = p.add_subparsers(dest="command", required=True)
    keys.register(sub)
    usage.register(sub)
    return p


@pytest.fixture
async def stack(sqlite_url: str) -> AsyncIterator[tuple[Settings, Ledger]]:
    """Settings pointing at running auth and metering servers, and the ledger behind metering."""
    engine = create_engine(sqlite_url)
    await migrate(engine, auth_main.MIGRATIONS, auth_main.VERSION_TABLE)
    await migrate(engine, metering_main.MIGRATIONS, metering_main.VERSION_TABLE)
    ledger = Ledger(engine)
    auth = await start_server(
        "127.0.0.1:0", functools.partial(add_auth, store=KeyStore(engine, b"s")), ["auth"]
    )
    metering = await start_server(
        "127.0.0.1:0", functools.partial(add_metering, ledger=ledger), ["metering"]
    )
    settings = Settings(
        auth_addr=f"127.0.0.1:{auth.port}", metering_addr=f"127.0.0.1:{metering.port}"
    )
    try:
        yield settings, ledger
    finally:
        await stop_server(auth, grace_s=0)
        await stop_server(metering, grace_s=0)
        await engine.dispose()


@pytest.fixture
def sluice() -> Runner:
    """`await sluice(settings, "keys", "list")` runs a command and returns its exit code."""

    async def run(settings: Settings, *argv: str) -> int:
        args = parser().parse_args(argv)
        return await asyncio.to_thread(args.func, args, settings)

    return run


@pytest.fixture
def dead_addr() -> str:
    """An address where nothing listens (port 1 is privileged and unused here)."""
    return "127.0.0.1:1"
