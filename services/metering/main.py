"""Entry point of the metering service: settings, storage and migrations, then the gRPC server."""

from __future__ import annotations

import argparse
import functools
import logging
from collections.abc import Sequence
from pathlib import Path

from services.common.db import create_engine, migrate
from services.common.grpc_server import configure_logging, run_service, serve
from services.common.settings import Settings
from services.metering.ledger import Ledger
from services.metering.servicer import SERVICE_NAME, add_to_server
from services.metering.sweeper import Sweeper, sweep_interval

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version_metering"

log = logging.getLogger(__name__)


async def run(settings: Settings) -> None:
    """Migrates the schema to head, recounts requests in flight, then serves until
    SIGINT/SIGTERM with the reservation sweeper running alongside."""
    engine = create_engine(settings.resolved_database_url())
    try:
        await migrate(engine, MIGRATIONS, VERSION_TABLE)
        ledger = Ledger(engine, reservation_ttl_s=settings.reservation_ttl_s)
        # Concurrency limits count admitted, unsettled requests; after a restart they are
        # known only from the database.
        if inflight := await ledger.recover():
            log.info("%d admitted requests still in flight", inflight)
        sweeper = Sweeper(ledger.expire_stale, sweep_interval(settings.reservation_ttl_s))
        sweeper.start()
        try:
            await serve(
                settings.metering_addr,
                functools.partial(add_to_server, ledger=ledger),
                [SERVICE_NAME],
                on_stop=sweeper.stop,
            )
        finally:
            await sweeper.stop()
            ledger.close()
    finally:
        await engine.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    argparse.ArgumentParser(
        prog="python -m services.metering",
        description="Sluice metering service (configured by SLUICE_* environment variables).",
    ).parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level)
    run_service(run(settings))
    return 0
