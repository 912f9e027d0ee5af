"""Write transactions and insert-if-missing statements that behave alike on SQLite and PostgreSQL.

Budget arithmetic relies on conditional UPDATEs; these helpers make sure concurrent writers
queue for the lock instead of failing half-way (SQLite) and that "create the counter row unless
it exists" is one statement on both dialects.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.expression import Executable


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


def insert_if_missing(
    conn: AsyncConnection, table: Table, values: dict[str, Any], keys: Sequence[str]
) -> Executable:
    """INSERT ... ON CONFLICT (keys) DO NOTHING in the connection's dialect."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).values(**values).on_conflict_do_nothing(index_elements=keys)
    return sqlite.insert(table).values(**values).on_conflict_do_nothing(index_elements=keys)


def upsert(
    conn: AsyncConnection, table: Table, values: dict[str, Any], keys: Sequence[str]
) -> Executable:
    """INSERT ... ON CONFLICT (keys) DO UPDATE SET (every other column) in the dialect."""
    changed = {k: v for k, v in values.items() if k not in keys}
    if conn.dialect.name == "postgresql":
        pg = postgresql.insert(table).values(**values)
        return pg.on_conflict_do_update(index_elements=keys, set_=changed)
    lite = sqlite.insert(table).values(**values)
    return lite.on_conflict_do_update(index_elements=keys, set_=changed)
