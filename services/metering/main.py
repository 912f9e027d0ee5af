"""Entry point of the metering service: settings, storage and migrations, then the gRPC server."""

from __future__ import annotations

import argparse
import asyncio
import functools
from collections.abc import Sequence
from pathlib import Path

from services.common.db import create_engine, migrate
from services.common.grpc_server import configure_logging, serve
from services.common.settings import Settings
from services.metering.ledger import Ledger
from services.metering.servicer import SERVICE_NAME, add_to_server

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version_metering"


async def run(settings: Settings) -> None:
    """Migrates the schema to head, then serves until SIGINT/SIGTERM."""
    engine = create_engine(settings.resolved_database_url())
    try:
        await migrate(engine, MIGRATIONS, VERSION_TABLE)
        ledger = Ledger(engine)
        await serve(
            settings.metering_addr, functools.partial(add_to_server, ledger=ledger), [SERVICE_NAME]
        )
    finally:
        await engine.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    argparse.ArgumentParser(
        prog="python -m services.metering",
        description="Sluice metering service (configured by SLUICE_* environment variables).",
    ).parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level)
    asyncio.run(run(settings))
    return 0
