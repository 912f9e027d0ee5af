"""Servers for the CLI to talk to, and runners for its commands.

`fake` serves the in-memory servicers of `tests.cli.fakes` (what each command sends, and how its
answers are printed); `stack` runs the real auth and metering services in-process over one
SQLite file, as `sluice up` runs them. The CLI makes blocking gRPC calls, so against `stack` the
commands run in a worker thread while the servers keep the event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from services.cli import main
from services.common.settings import Settings
from services.pb.auth.v1 import auth_pb2_grpc
from services.pb.metering.v1 import metering_pb2_grpc
from tests.cli.fakes import FakeAuth, FakeMetering

Runner = Callable[..., Awaitable[int]]
SyncRunner = Callable[..., int]


def parser() -> argparse.ArgumentParser:
    """The `sluice` parser as `services.cli.main` assembles it."""
    return main.build_parser()


def run(settings: Settings, *argv: str) -> int:
    """Parses `argv` and runs the command as `sluice` does (errors as one line, exit 1)."""
    return main.run(parser().parse_args(argv), settings)


@dataclass
class Fake:
    settings: Settings
    auth: FakeAuth
    metering: FakeMetering


@pytest.fixture
def fake() -> Iterator[Fake]:
    """Fake auth and metering servicers on one local port, and settings pointing at them."""
    auth, metering = FakeAuth(), FakeMetering()
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    auth_pb2_grpc.add_AuthServiceServicer_to_server(auth, server)
    metering_pb2_grpc.add_MeteringServiceServicer_to_server(metering, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    addr = f"127.0.0.1:{port}"
    try:
        yield Fake(Settings(auth_addr=addr, metering_addr=addr), auth, metering)
    finally:
        server.stop(grace=None)


@pytest.fixture
def cli() -> SyncRunner:
    """`cli(settings, "keys", "list")` runs a command against `fake` and returns its exit code."""
    return run


@pytest.fixture
async def stack(sqlite_url: str) -> AsyncIterator[tuple[Settings, Any]]:
    """Settings pointing at running auth and metering servers, and the ledger behind metering."""
    # Imported here so that the fake-server tests do not depend on the services' internals.
    from services.auth import main as auth_main
    from services.auth.servicer import add_to_server as add_auth
    from services.auth.store import KeyStore
    from services.common.db import create_engine, migrate
    from services.common.grpc_server import start_server, stop_server
    from services.metering import main as metering_main
    from services.metering.ledger import Ledger
    from services.metering.servicer import add_to_server as add_metering

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
    """`await sluice(settings, "keys", "list")` runs a command against `stack` and returns its
    exit code."""

    async def run_in_thread(settings: Settings, *argv: str) -> int:
        return await asyncio.to_thread(run, settings, *argv)

    return run_in_thread


@pytest.fixture
def dead_addr() -> str:
    """An address where nothing listens (port 1 is privileged and unused here)."""
    return "127.0.0.1:1"
