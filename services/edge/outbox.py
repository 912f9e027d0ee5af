"""The edge's outbox: settlements that metering could not take, kept durably until it does.

One SQLite file per edge process, `SLUICE_DATA_DIR/outbox/edge-<host>-<port>.sqlite3`, held by
an exclusive lock on a file beside it so that no two processes write one outbox. Each row is a
serialized `SettleRequest`, committed with `synchronous=FULL` (the WAL is fsync'd) before the
edge lets the client see the end of its response; a delivered row is deleted. A row metering
refused for good (a malformed request) is kept, marked dead, for an operator to read.

On open the edge also takes over the rows of any other outbox in the folder whose lock nobody
holds (an edge that ran under another host name or port and did not come back), so that no kept
settlement depends on an edge returning with the same name. SQLite's blocking calls run on one
thread of their own, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
import socket
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from services.pb.metering.v1 import metering_pb2

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS settlements (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL,
    reservation_id TEXT NOT NULL,
    body BLOB NOT NULL,
    kept_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    failure TEXT NOT NULL DEFAULT '',
    dead INTEGER NOT NULL DEFAULT 0
)
"""
INSERT = (
    "INSERT INTO settlements (request_id, reservation_id, body, kept_ms, failure, dead) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
COLUMNS = "request_id, reservation_id, body, kept_ms, attempts, failure, dead"


def outbox_path(data_dir: Path, port: int, host: str | None = None) -> Path:
    """This edge process's outbox file (see the module docstring)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", host or socket.gethostname()) or "edge"
    return data_dir / "outbox" / f"edge-{name}-{port}.sqlite3"


@dataclass(frozen=True)
class Kept:
    """One kept settlement."""

    id: int
    request: metering_pb2.SettleRequest
    attempts: int


class OutboxInUse(RuntimeError):
    """Another process holds this outbox."""


def _lock(path: Path) -> int | None:
    """An exclusive lock on `path` (created if needed), or None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _connect(path: Path, *, create: bool) -> sqlite3.Connection:
    mode = "rwc" if create else "rw"
    conn = sqlite3.connect(f"file:{path}?mode={mode}", uri=True, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: every commit's WAL frames reach the disk before the commit returns.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def _remove_files(db: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{db}{suffix}")


class Outbox:
    """The settlements kept by one edge process (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pending = 0
        self.dead = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None

    # Every SQLite call runs on the executor's one thread (the connection lives there).
    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        result: T = await loop.run_in_executor(self._executor, fn, *args)
        return result

    def open(self) -> None:
        """Takes the lock, creates the file if needed and adopts orphaned outboxes; blocking
        (called once at start, before the edge serves)."""
        self._executor.submit(self._open).result()
        if self.pending or self.dead:
            log.warning(
                "outbox %s holds %d settlement(s) to deliver (%d dead)",
                self.path,
                self.pending,
                self.dead,
            )

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = _lock(Path(f"{self.path}.lock"))
        if lock is None:
            raise OutboxInUse(f"outbox {self.path} is in use by another process")
        self._lock_fd = lock
        self._conn = _connect(self.path, create=True)
        self._conn.execute(SCHEMA)
        for other in sorted(self.path.parent.glob("edge-*.sqlite3")):
            if other != self.path:
                self._adopt(other)
        self._count()

    def _adopt(self, other: Path) -> None:
        """Moves the rows of an outbox no process holds into this one, then deletes it."""
        lock_path = Path(f"{other}.lock")
        lock = _lock(lock_path)
        if lock is None:
            return  # a live edge's
        try:
            try:
                src = _connect(other, create=False)
            except sqlite3.OperationalError:
                return  # adopted by another edge meanwhile
            try:
                rows = src.execute(f"SELECT {COLUMNS} FROM settlements ORDER BY id").fetchall()
            except sqlite3.DatabaseError as exc:
                log.error("cannot read outbox %s (%s); left as it is", other, exc)
                src.close()
                return
            src.close()
            assert self._conn is not None
            with self._conn:
                self._conn.execute("BEGIN")
                self._conn.executemany(
                    f"INSERT INTO settlements ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", rows
                )
            # Committed here first: a crash before the delete leaves copies in both files,
            # which settlement's idempotency turns into one record.
            _remove_files(other)
            os.unlink(lock_path)
            log.warning("adopted %d settlement(s) from outbox %s", len(rows), other)
        finally:
            os.close(lock)

    def _count(self) -> None:
        assert self._conn is not None
        pending, dead = self._conn.execute(
            "SELECT COUNT(*) - COALESCE(SUM(dead), 0), COALESCE(SUM(dead), 0) FROM settlements"
        ).fetchone()
        self.pending, self.dead = int(pending), int(dead)

    async def keep(
        self, request: metering_pb2.SettleRequest, failure: str = "", *, dead: bool = False
    ) -> None:
        """Stores `request`, durably, before returning."""
        await self._run(self._keep, request, failure, dead)

    def _keep(self, request: metering_pb2.SettleRequest, failure: str, dead: bool) -> None:
        assert self._conn is not None
        row = (
            request.request_id,
            request.reservation_id,
            request.SerializeToString(),
            int(time.time() * 1000),
            failure,
            int(dead),
        )
        with self._conn:
            self._conn.execute("BEGIN")
            self._conn.execute(INSERT, row)
        if dead:
            self.dead += 1
        else:
            self.pending += 1

    async def due(self, limit: int) -> list[Kept]:
        """The oldest settlements still to deliver."""
        return await self._run(self._due, limit)

    def _due(self, limit: int) -> list[Kept]:
        assert self._conn is not None
        rows = self._conn.execute(
            "SELECT id, body, attempts FROM settlements WHERE dead = 0 ORDER BY id LIMIT ?",
            (limit,),
        ).fetchall()
        return [Kept(r[0], metering_pb2.SettleRequest.FromString(r[1]), r[2]) for r in rows]

    async def delivered(self, row_id: int) -> None:
        await self._run(self._delivered, row_id)

    def _delivered(self, row_id: int) -> None:
        assert self._conn is not None
        with self._conn:
            self._conn.execute("BEGIN")
            deleted = self._conn.execute("DELETE FROM settlements WHERE id = ?", (row_id,))
        self.pending -= deleted.rowcount

    async def failed(self, row_id: int, failure: str, *, dead: bool) -> None:
        """Records a failed delivery; a `dead` row is not tried again."""
        await self._run(self._failed, row_id, failure, dead)

    def _failed(self, row_id: int, failure: str, dead: bool) -> None:
        assert self._conn is not None
        with self._conn:
            self._conn.execute("BEGIN")
            self._conn.execute(
                "UPDATE settlements SET attempts = attempts + 1, failure = ?, dead = ? "
                "WHERE id = ?",
                (failure, int(dead), row_id),
            )
        if dead:
            self.pending -= 1
            self.dead += 1

    async def close(self) -> None:
        await self._run(self._close)
        self._executor.shutdown(wait=True)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
