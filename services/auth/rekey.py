"""Re-encrypting every stored provider credential under a new data key (`sluice providers rekey`).

`rekey` re-encrypts all rows in one transaction: either every credential moves to the new key or
none does. `rekey_command` is what the CLI calls. When the data key lives in
`data_dir/credentials_key`, it replaces that file with the new key; the new key is first staged
in `credentials_key.new` (mode 0600) and only renamed over the old file after the database
commit, so an interruption never loses the key the rows are sealed under: running the command
again picks the staged key up and finishes. When the key comes from `SLUICE_CREDENTIALS_KEY`,
nothing is written: the operator must set the returned key as the new value before auth restarts.

Run it with the auth service stopped, or restart auth right after: a running service keeps the
key it started with, and a credential it stores in between is sealed under the old key.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import cast

from sqlalchemy import Table, inspect, select, update
from sqlalchemy.engine import Connection

from services.auth.crypto import KEY_BYTES, DataKey, Sealed, associated_data, generate_data_key
from services.auth.models import ProviderCredential
from services.common.db import create_engine
from services.common.settings import Settings, decode_data_key

log = logging.getLogger(__name__)

_TABLE = cast(Table, ProviderCredential.__table__)


async def rekey(database_url: str, old_key: bytes, new_key: bytes) -> int:
    """Re-encrypts every credential sealed under `old_key` with `new_key`; returns how many.

    Rows already under `new_key` (left by an interrupted earlier run) are kept as they are. A row
    under any other key aborts the whole transaction with `CredentialKeyMismatch`.
    """
    old, new = DataKey(old_key), DataKey(new_key)
    engine = create_engine(database_url)
    try:
        async with engine.begin() as conn:

            def has_table(sync_conn: Connection) -> bool:
                return inspect(sync_conn).has_table(_TABLE.name)

            if not await conn.run_sync(has_table):
                return 0
            # FOR UPDATE (PostgreSQL): no concurrent change to a row between reading and sealing.
            rows = (await conn.execute(select(_TABLE).with_for_update())).all()
            count = 0
            for row in rows:
                if row.key_version == new.version:
                    continue
                aad = associated_data(row.org_id, row.provider, row.id)
                sealed_old = Sealed(row.ciphertext, row.nonce, row.key_version)
                plaintext = old.open(sealed_old, aad, f"provider credential {row.id}")
                sealed = new.seal(plaintext, aad)
                await conn.execute(
                    update(_TABLE)
                    .where(_TABLE.c.id == row.id)
                    .values(
                        ciphertext=sealed.ciphertext,
                        nonce=sealed.nonce,
                        key_version=sealed.key_version,
                    )
                )
                count += 1
    finally:
        await engine.dispose()
    log.info("re-encrypted %d provider credentials (key %s -> %s)", count, old.version, new.version)
    return count


def rekey_command(settings: Settings, new_key: bytes | None) -> tuple[int, bytes]:
    """Re-encrypts every credential under `new_key` (generated when None).

    Returns the number of re-encrypted rows and the new key. Blocking: it runs its own event
    loop, so call it from synchronous code (or a worker thread).
    """
    if new_key is not None and len(new_key) != KEY_BYTES:
        raise ValueError(f"the new credentials data key must be {KEY_BYTES} bytes")
    old_key = settings.resolved_credentials_key()
    url = settings.resolved_database_url()
    if settings.credentials_key:
        key = new_key if new_key is not None else generate_data_key()
        return asyncio.run(rekey(url, old_key, key)), key
    path = settings.credentials_key_path()
    staged = path.with_name(path.name + ".new")
    key = _stage(staged, new_key)
    count = asyncio.run(rekey(url, old_key, key))
    # Atomic on POSIX: readers see the old key or the new one, never a partial file.
    os.replace(staged, path)
    _fsync_dir(path.parent)
    return count, key


def _stage(staged: Path, new_key: bytes | None) -> bytes:
    """The key in `staged`, written there (0600) first unless an interrupted run left it."""
    try:
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if staged.stat().st_mode & 0o077:
            raise ValueError(
                f"{staged} is accessible to group or others; run `chmod 600 {staged}`"
            ) from None
        key = decode_data_key(staged.read_text(), str(staged))
        if new_key is not None and new_key != key:
            raise ValueError(
                f"{staged} holds the key of an interrupted rekey; run the command again "
                "without a new key to finish that one first"
            ) from None
        log.info("resuming an interrupted rekey with the key staged in %s", staged)
        return key
    key = new_key if new_key is not None else generate_data_key()
    with os.fdopen(fd, "w") as fh:
        fh.write(key.hex() + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return key


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
