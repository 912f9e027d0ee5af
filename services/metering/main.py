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
from services.metering.ratelimit import Limiter
from services.metering.redis_limits import RedisLimiter, connect
from services.metering.servicer import SERVICE_NAME, add_to_server
from services.metering.sweeper import Sweeper, sweep_interval

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version_metering"

log = logging.getLogger(__name__)


def limiter(settings: Settings) -> Limiter | None:
    """The Redis limiter when SLUICE_REDIS_URL is set; None keeps the windows in memory."""
    if not settings.redis_url:
        return None
    client = connect(
        settings.redis_url, cluster=settings.redis_cluster, timeout_s=settings.redis_timeout_s
    )
    return RedisLimiter(client, prefix=settings.redis_prefix)


async def run(settings: Settings) -> None:
    """Migrates the schema to head, recounts requests in flight, then serves until
    SIGINT/SIGTERM with the reservation sweeper running alongside.

    Several replicas may run against one database and one Redis: migrations take an advisory
    lock (`db.migrate`), the sweepers of all replicas may run at once (closing a reservation is
    conditional, so each is expired once), and with Redis nothing is recounted (the windows
    live there).
    """
    engine = create_engine(settings.resolved_database_url())
    try:
        await migrate(engine, MIGRATIONS, VERSION_TABLE)
        ledger = Ledger(
            engine, reservation_ttl_s=settings.reservation_ttl_s, limiter=limiter(settings)
        )
        # In-memory concurrency limits count admitted, unsettled requests; after a restart
        # they are known only from the database.
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
                grace_s=settings.drain_grace_s,
                delay_s=settings.drain_delay_s,
            )
        finally:
            await sweeper.stop()
            await ledger.aclose()
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
