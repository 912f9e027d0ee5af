"""Entry point of the auth service: settings, storage and migrations, then the gRPC server."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Sequence
from pathlib import Path

from services.auth.providers import ProviderStore
from services.auth.servicer import SERVICE_NAME, add_to_server
from services.auth.store import KeyStore
from services.common.db import create_engine, migrate
from services.common.grpc_server import configure_logging, run_service, serve
from services.common.settings import Settings
from services.common.tracing import Tracing, setup_tracing

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version_auth"


async def run(settings: Settings, tracing: Tracing | None = None) -> None:
    """Migrates the schema to head, then serves until SIGINT/SIGTERM."""
    engine = create_engine(settings.resolved_database_url())
    try:
        await migrate(engine, MIGRATIONS, VERSION_TABLE)
        store = KeyStore(engine, settings.resolved_key_secret())
        providers = ProviderStore(engine, settings.resolved_credentials_key())
        register = functools.partial(add_to_server, store=store, providers=providers)
        await serve(
            settings.auth_addr,
            register,
            [SERVICE_NAME],
            grace_s=settings.drain_grace_s,
            delay_s=settings.drain_delay_s,
            tracing=tracing,
        )
    finally:
        await engine.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    argparse.ArgumentParser(
        prog="python -m services.auth",
        description="Sluice auth service (configured by SLUICE_* environment variables).",
    ).parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level)
    tracing = setup_tracing("auth")
    try:
        run_service(run(settings, tracing))
    finally:
        tracing.shutdown()
    return 0
