"""Storage plumbing: async SQLAlchemy engines and Alembic migrations applied on start.

PostgreSQL (asyncpg) in compose, CI and production; SQLite (aiosqlite) as the embedded default.
Each service owns its tables and its migration history (its own Alembic version table), so the
two can share one database or live apart.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, event, text
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


def create_engine(url: str) -> AsyncEngine:
    """An async engine; SQLite gets WAL and a busy timeout so several processes can share it."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Every connection is returned with its transaction already ended (committed, or rolled
        # back by SQLAlchemy's Connection on close), so the pool's own rollback on return would
        # be one more trip to the driver's thread for nothing.
        engine = create_async_engine(url, connect_args={"timeout": 30}, pool_reset_on_return=None)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def sqlite_file_engine(engine: AsyncEngine) -> Engine | None:
    """A synchronous (pysqlite) engine on the same SQLite file as `engine`, with the same
    pragmas; None for any other database, or an in-memory one (which would be another database)."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    sync = create_sync_engine(
        url.set(drivername="sqlite"), connect_args={"timeout": 30}, pool_reset_on_return=None
    )
    event.listen(sync, "connect", _sqlite_pragmas)
    return sync


async def migrate(
    engine: AsyncEngine,
    script_location: Path,
    version_table: str,
    revision: str = "head",
    *,
    downgrade: bool = False,
) -> None:
    """Moves the service's schema to `revision` (services start at head) over the engine's own
    connection; `downgrade` goes back instead, for a rollback.

    On PostgreSQL the transaction first takes an advisory lock named by the version table, so
    replicas starting together migrate one after the other (the later ones find the schema at
    head) instead of racing to create the same tables.
    """
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location))
    cfg.attributes["version_table"] = version_table

    def _run(sync_conn: Any) -> None:
        cfg.attributes["connection"] = sync_conn
        (command.downgrade if downgrade else command.upgrade)(cfg, revision)

    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            lock = int.from_bytes(hashlib.sha256(version_table.encode()).digest()[:8], "big")
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock - (1 << 63)})
        await conn.run_sync(_run)


def run_migrations_online(target_metadata: Any) -> None:
    """Body of each service's Alembic `env.py`: migrate over the connection `migrate()` passes."""
    from alembic import context

    connection = context.config.attributes["connection"]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=context.config.attributes.get("version_table", "alembic_version"),
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
