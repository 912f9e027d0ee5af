"""Write transactions and insert-if-missing statements that behave alike on SQLite and PostgreSQL.

Budget arithmetic relies on conditional UPDATEs; these helpers make sure concurrent writers
queue for the lock instead of failing half-way (SQLite) and that "create the counter row unless
it exists" is one statement on both dialects.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy import Connection, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.expression import Executable

from services.common.db import sqlite_file_engine

T = TypeVar("T")


@asynccontextmanager
async def write_transaction(
    engine: AsyncEngine, *, write_first: bool = False
) -> AsyncIterator[AsyncConnection]:
    """A transaction committed on success and rolled back on any exception or cancellation.

    On SQLite a transaction that reads before it writes starts with BEGIN IMMEDIATE: the write
    lock is taken up front, so two writers queue through busy_timeout instead of one failing
    with "database is locked" when it upgrades a read snapshot that another commit made stale.
    A caller whose first statement is a write passes `write_first=True` and saves that round
    trip: the driver's implicit BEGIN comes right before that write, which then waits for the
    lock through busy_timeout just as BEGIN IMMEDIATE would.
    """
    async with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            if not write_first:
                await conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            await conn.begin()
        try:
            yield conn
        except BaseException:
            await conn.rollback()
            raise
        await conn.commit()


class Transactions:
    """Runs write transactions whose body is plain synchronous SQLAlchemy Core, in one trip.

    On a SQLite file the body runs on one dedicated thread with its own pysqlite connection:
    one hand-off per transaction, where the async driver pays one thread hop per cursor,
    statement, fetch and close (a dozen for a settlement). SQLite admits one writer at a time
    anyway, so one thread loses no concurrency. On PostgreSQL the same body runs inside
    `write_transaction` through `run_sync`, each statement an asyncpg round trip as before.

    A SQLite transaction whose caller is cancelled still runs to its end on the thread (commit or
    rollback), like a client that vanished after sending its COMMIT.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._sqlite = sqlite_file_engine(engine)
        self._thread = (
            ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer") if self._sqlite else None
        )

    async def run(self, body: Callable[[Connection], T], *, write_first: bool = False) -> T:
        """`body(conn)` in one transaction, committed if it returns and rolled back if it
        raises; `write_first` as for `write_transaction`."""
        if self._thread is None:
            async with write_transaction(self._engine, write_first=write_first) as conn:
                return await conn.run_sync(body)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._run_sqlite, body, write_first)

    def _run_sqlite(self, body: Callable[[Connection], T], write_first: bool) -> T:
        assert self._sqlite is not None
        with self._sqlite.connect() as conn:
            if not write_first:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                result = body(conn)
            except BaseException:
                conn.rollback()
                raise
            conn.commit()
            return result

    def close(self) -> None:
        """Waits for a transaction in progress, then closes the SQLite thread and connection."""
        if self._thread is not None:
            self._thread.shutdown(wait=True)
        if self._sqlite is not None:
            self._sqlite.dispose()


def insert_if_missing(
    conn: Connection | AsyncConnection, table: Table, values: dict[str, Any], keys: Sequence[str]
) -> Executable:
    """INSERT ... ON CONFLICT (keys) DO NOTHING in the connection's dialect."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).values(**values).on_conflict_do_nothing(index_elements=keys)
    return sqlite.insert(table).values(**values).on_conflict_do_nothing(index_elements=keys)


def upsert(
    conn: Connection | AsyncConnection, table: Table, values: dict[str, Any], keys: Sequence[str]
) -> Executable:
    """INSERT ... ON CONFLICT (keys) DO UPDATE SET (every other column) in the dialect."""
    changed = {k: v for k, v in values.items() if k not in keys}
    if conn.dialect.name == "postgresql":
        pg = postgresql.insert(table).values(**values)
        return pg.on_conflict_do_update(index_elements=keys, set_=changed)
    lite = sqlite.insert(table).values(**values)
    return lite.on_conflict_do_update(index_elements=keys, set_=changed)
