"""Entry point of the metering service: settings, storage and migrations, then the gRPC server."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import grpc

from services.common.db import create_engine, migrate
from services.common.grpc_server import configure_logging, run_service, serve
from services.common.settings import Settings
from services.common.tracing import Tracing, setup_tracing
from services.metering import responses_servicer
from services.metering.ledger import Ledger
from services.metering.ratelimit import Limiter
from services.metering.redis_limits import RedisLimiter, connect
from services.metering.responses import ResponseStore
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


async def run(settings: Settings, tracing: Tracing | None = None) -> None:
    """Migrates the schema to head, recounts requests in flight, then serves until
    SIGINT/SIGTERM with the sweepers of reservations and stored responses running alongside.

    Several replicas may run against one database and one Redis: migrations take an advisory
    lock (`db.migrate`), the sweepers of all replicas may run at once (closing a reservation is
    conditional, so each is expired once; deleting expired responses twice deletes nothing
    more), and with Redis nothing is recounted (the windows live there).
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
        store = ResponseStore(engine, retention_s=settings.responses_retention_s)
        sweepers = [
            Sweeper(ledger.expire_stale, sweep_interval(settings.reservation_ttl_s)),
            Sweeper(store.expire, sweep_interval(settings.responses_retention_s), "responses"),
        ]
        for sweeper in sweepers:
            sweeper.start()

        servicers = []

        def register(server: grpc.aio.Server) -> None:
            servicers.append(add_to_server(server, ledger))
            responses_servicer.add_to_server(server, store)

        def drain() -> None:
            for servicer in servicers:
                servicer.drain()

        async def stop_sweepers() -> None:
            for sweeper in sweepers:
                await sweeper.stop()

        try:
            await serve(
                settings.metering_addr,
                register,
                [SERVICE_NAME, responses_servicer.SERVICE_NAME],
                on_stop=stop_sweepers,
                on_drain=drain,
                grace_s=settings.drain_grace_s,
                delay_s=settings.drain_delay_s,
                tracing=tracing,
            )
        finally:
            await stop_sweepers()
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
    tracing = setup_tracing("metering")
    try:
        run_service(run(settings, tracing))
    finally:
        tracing.shutdown()
    return 0
