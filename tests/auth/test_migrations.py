"""Auth's migration history on SQLite and PostgreSQL: a database made by revision 0001, with
keys in it, upgrades to head with every key still working in its organization's default
project."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import AsyncEngine

from services.auth import keys
from services.auth.main import MIGRATIONS, VERSION_TABLE
from services.auth.models import metadata
from services.auth.orgs import DEFAULT_PROJECT
from services.auth.store import KeyStore
from services.common.db import create_engine, migrate
from services.common.errors import Unauthenticated
from services.common.sqltypes import UTCDateTime
from tests.auth.conftest import SERVER_SECRET

ORGS = sa.table(
    "organizations",
    sa.column("id", sa.String()),
    sa.column("name", sa.String()),
    sa.column("created_at", UTCDateTime()),
)
KEYS = sa.table(
    "api_keys",
    sa.column("id", sa.String()),
    sa.column("org_id", sa.String()),
    sa.column("name", sa.String()),
    sa.column("key_hash", sa.String()),
    sa.column("fingerprint", sa.String()),
    sa.column("created_at", UTCDateTime()),
    sa.column("revoked_at", UTCDateTime()),
)
T0 = datetime(2025, 1, 1, tzinfo=UTC)


async def _migrate(engine: AsyncEngine, revision: str, *, down: bool = False) -> None:
    await migrate(engine, MIGRATIONS, VERSION_TABLE, revision, downgrade=down)


@pytest.fixture
async def old_engine(db_url: str) -> Any:
    engine = create_engine(db_url)
    try:
        await _migrate(engine, "0001")
        yield engine
    finally:
        await engine.dispose()


async def _seed_0001(engine: AsyncEngine) -> dict[str, str]:
    """Two organizations and three keys (one revoked) as revision 0001 stored them."""
    secrets = {name: keys.generate_key() for name in ("a1", "a2", "g1")}
    async with engine.begin() as conn:
        await conn.execute(
            ORGS.insert(),
            [
                {"id": "a" * 32, "name": "acme", "created_at": T0},
                {"id": "b" * 32, "name": "globex", "created_at": T0},
            ],
        )
        await conn.execute(
            KEYS.insert(),
            [
                {
                    "id": f"key_{i:016x}",
                    "org_id": ("a" if name.startswith("a") else "b") * 32,
                    "name": name,
                    "key_hash": keys.hash_key(secret, SERVER_SECRET),
                    "fingerprint": keys.fingerprint(secret),
                    "created_at": T0,
                    "revoked_at": T0 if name == "a2" else None,
                }
                for i, (name, secret) in enumerate(secrets.items())
            ],
        )
    return secrets


async def test_upgrade_from_0001_keeps_keys_working(old_engine: AsyncEngine) -> None:
    secrets = await _seed_0001(old_engine)
    await _migrate(old_engine, "head")
    store = KeyStore(old_engine, SERVER_SECRET)

    orgs = {o.name: o for o in await store.orgs.list_orgs()}
    assert set(orgs) == {"acme", "globex"}
    projects = await store.orgs.list_projects()
    assert sorted((p.org_name, p.name, p.is_default) for p in projects) == [
        ("acme", DEFAULT_PROJECT, True),
        ("globex", DEFAULT_PROJECT, True),
    ]
    for p in projects:
        assert p.id.startswith("proj_") and orgs[p.org_name].default_project_id == p.id

    a1 = await store.authenticate(secrets["a1"], "10.0.0.1", "smollm2")
    assert (a1.org_name, a1.key_name) == ("acme", "a1")
    assert a1.project_id == orgs["acme"].default_project_id
    assert a1.allowed_models == () and a1.key_quota.budget_period == "none"
    g1 = await store.authenticate(secrets["g1"])
    assert g1.project_id == orgs["globex"].default_project_id
    with pytest.raises(Unauthenticated, match="revoked"):
        await store.authenticate(secrets["a2"])

    listed = {k.name: k for k in await store.list_keys()}
    assert {n: k.state for n, k in listed.items()} == {
        "a1": "active",
        "a2": "revoked",
        "g1": "active",
    }
    assert all(k.expires_at is None and k.previous_fingerprint is None for k in listed.values())

    # New keys and rotation work on migrated rows.
    new, _ = await store.create_key("acme", "a3")
    assert new.project_id == orgs["acme"].default_project_id
    _, rotated = await store.rotate_key(secrets["a1"], grace_seconds=60)
    await store.authenticate(rotated)
    await store.authenticate(secrets["a1"])


async def test_downgrade_to_0001_and_back(old_engine: AsyncEngine) -> None:
    secrets = await _seed_0001(old_engine)
    await _migrate(old_engine, "head")
    await _migrate(old_engine, "0001", down=True)
    async with old_engine.connect() as conn:
        count = await conn.scalar(sa.select(sa.func.count()).select_from(KEYS))
    assert count == 3
    await _migrate(old_engine, "head")
    store = KeyStore(old_engine, SERVER_SECRET)
    assert (await store.authenticate(secrets["g1"])).org_name == "globex"


async def test_head_schema_matches_the_models(engine: AsyncEngine) -> None:
    def diff(sync_conn: Any) -> list[Any]:
        ctx = MigrationContext.configure(sync_conn, opts={"version_table": VERSION_TABLE})
        return compare_metadata(ctx, metadata)

    async with engine.connect() as conn:
        assert await conn.run_sync(diff) == []
