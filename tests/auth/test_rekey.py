"""Re-encryption under a new data key, and where the data key comes from (environment or a
0600 file), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import os
import stat
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.auth.crypto import CredentialKeyMismatch, generate_data_key, key_version
from services.auth.providers import ProviderStore
from services.auth.rekey import rekey, rekey_command
from services.auth.store import KeyStore
from services.common.settings import Settings
from tests.auth.conftest import DATA_KEY

OPENAI_KEY = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789"
ANTHROPIC_KEY = "sk-ant-api03-0123456789abcdefghijklmnopqrstuv"


async def _seed(store: KeyStore, engine: AsyncEngine, data_key: bytes) -> tuple[str, str]:
    acme = await store.orgs.create_org("acme")
    globex = await store.orgs.create_org("globex")
    providers = ProviderStore(engine, data_key)
    await providers.add_provider("acme", "openai", OPENAI_KEY)
    await providers.add_provider("globex", "anthropic", ANTHROPIC_KEY)
    return acme.id, globex.id


async def _check(engine: AsyncEngine, data_key: bytes, acme: str, globex: str) -> None:
    providers = ProviderStore(engine, data_key)
    assert (await providers.get_credential(acme, "openai")).api_key == OPENAI_KEY
    assert (await providers.get_credential(globex, "anthropic")).api_key == ANTHROPIC_KEY


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _exists(path: Path) -> bool:
    return path.exists()


async def test_rekey_reencrypts_every_row(
    store: KeyStore, engine: AsyncEngine, db_url: str
) -> None:
    acme, globex = await _seed(store, engine, DATA_KEY)
    new = generate_data_key()
    assert await rekey(db_url, DATA_KEY, new) == 2
    await _check(engine, new, acme, globex)
    with pytest.raises(CredentialKeyMismatch):
        await ProviderStore(engine, DATA_KEY).get_credential(acme, "openai")
    # Rows already under the new key (an interrupted earlier run) are left as they are.
    assert await rekey(db_url, DATA_KEY, new) == 0
    await _check(engine, new, acme, globex)


async def test_rekey_with_a_wrong_old_key_changes_nothing(
    store: KeyStore, engine: AsyncEngine, db_url: str
) -> None:
    acme, globex = await _seed(store, engine, DATA_KEY)
    with pytest.raises(CredentialKeyMismatch) as err:
        await rekey(db_url, bytes(32), generate_data_key())
    assert key_version(DATA_KEY) in err.value.message
    await _check(engine, DATA_KEY, acme, globex)


async def test_rekey_of_an_unmigrated_database_is_a_no_op(sqlite_url: str) -> None:
    assert await rekey(sqlite_url, DATA_KEY, generate_data_key()) == 0


async def test_rekey_command_with_the_key_file(
    store: KeyStore, engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path / "data", database_url=db_url, credentials_key="")
    old = settings.resolved_credentials_key()
    path = settings.credentials_key_path()
    assert _mode(path) == 0o600
    acme, globex = await _seed(store, engine, old)

    count, new = await asyncio.to_thread(rekey_command, settings, None)
    assert count == 2 and len(new) == 32 and new != old
    assert settings.resolved_credentials_key() == new
    assert _mode(path) == 0o600
    assert not _exists(path.with_name("credentials_key.new"))
    await _check(engine, new, acme, globex)

    chosen = generate_data_key()
    count, got = await asyncio.to_thread(rekey_command, settings, chosen)
    assert (count, got) == (2, chosen)
    assert settings.resolved_credentials_key() == chosen


async def test_rekey_command_finishes_an_interrupted_run(
    store: KeyStore, engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path, database_url=db_url, credentials_key="")
    old = settings.resolved_credentials_key()
    acme, globex = await _seed(store, engine, old)
    # The earlier run staged its key and committed, then stopped before the rename.
    staged_key = generate_data_key()
    staged = tmp_path / "credentials_key.new"
    staged.write_text(staged_key.hex())
    staged.chmod(0o600)
    assert await rekey(db_url, old, staged_key) == 2

    with pytest.raises(ValueError, match="interrupted"):
        await asyncio.to_thread(rekey_command, settings, generate_data_key())
    count, new = await asyncio.to_thread(rekey_command, settings, None)
    assert (count, new) == (0, staged_key)
    assert settings.resolved_credentials_key() == staged_key
    assert not _exists(staged)
    await _check(engine, staged_key, acme, globex)


async def test_rekey_command_with_the_environment_writes_no_file(
    store: KeyStore, engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    old = generate_data_key()
    data = tmp_path / "data"
    settings = Settings(data_dir=data, database_url=db_url, credentials_key=old.hex())
    acme, globex = await _seed(store, engine, old)
    count, new = await asyncio.to_thread(rekey_command, settings, None)
    assert count == 2
    assert not _exists(data)
    await _check(engine, new, acme, globex)


def test_key_from_the_environment_in_hex_or_base64(tmp_path: Path) -> None:
    raw = generate_data_key()
    for text in (
        raw.hex(),
        raw.hex().upper(),
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
    ):
        settings = Settings(data_dir=tmp_path, credentials_key=text)
        assert settings.resolved_credentials_key() == raw
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("text", ["hunter2", "00" * 31, "zz" * 32, base64.b64encode(b"x" * 31)])
def test_bad_key_in_the_environment_is_refused_without_echo(
    tmp_path: Path, text: str | bytes
) -> None:
    value = text.decode() if isinstance(text, bytes) else text
    with pytest.raises(ValueError, match="SLUICE_CREDENTIALS_KEY") as err:
        Settings(data_dir=tmp_path, credentials_key=value).resolved_credentials_key()
    assert value not in str(err.value)


def test_key_file_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "fresh", credentials_key="")
    key = settings.resolved_credentials_key()
    assert len(key) == 32
    path = settings.credentials_key_path()
    assert path == tmp_path / "fresh" / "credentials_key"
    assert _mode(path) == 0o600
    assert settings.resolved_credentials_key() == key


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_key_file_open_to_others_is_refused(tmp_path: Path, mode: int) -> None:
    settings = Settings(data_dir=tmp_path, credentials_key="")
    key = settings.resolved_credentials_key()
    path = settings.credentials_key_path()
    os.chmod(path, mode)
    with pytest.raises(ValueError, match="chmod 600") as err:
        settings.resolved_credentials_key()
    assert key.hex() not in str(err.value)
