"""`KeyStore` on SQLite and PostgreSQL: create, authenticate, list, revoke; hot-path queries."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.auth import keys
from services.auth.models import Organization
from services.auth.store import KeyStore
from services.common.errors import InvalidArgument, NotFound, Unauthenticated
from tests.auth.conftest import SERVER_SECRET


async def test_create_then_authenticate(store: KeyStore) -> None:
    info, secret = await store.create_key("acme", "web")
    assert keys.is_well_formed(secret)
    assert info.id.startswith("key_") and len(info.id) == 4 + 16
    assert info.org_name == "acme" and info.name == "web"
    assert info.fingerprint == keys.fingerprint(secret)
    assert info.created_at.tzinfo is not None and not info.revoked

    principal = await store.authenticate(secret)
    assert principal.key_id == info.id
    assert principal.key_name == "web"
    assert principal.org_id == info.org_id
    assert principal.org_name == "acme"


async def test_org_is_created_once_and_reused(store: KeyStore) -> None:
    a, _ = await store.create_key("acme", "one")
    b, _ = await store.create_key("acme", "two")
    c, _ = await store.create_key("globex", "one")
    assert a.org_id == b.org_id != c.org_id


async def test_concurrent_creates_of_one_org_all_succeed(store: KeyStore) -> None:
    results = await asyncio.gather(*(store.create_key("racing", f"k{i}") for i in range(8)))
    assert len({info.org_id for info, _ in results}) == 1
    assert len(await store.list_keys("racing")) == 8


async def test_only_the_hash_is_stored(store: KeyStore, engine: AsyncEngine) -> None:
    _, secret = await store.create_key("acme", "web")
    async with engine.connect() as conn:
        (stored,) = (await conn.execute(text("SELECT key_hash FROM api_keys"))).one()
    assert stored == keys.hash_key(secret, SERVER_SECRET)
    assert secret not in stored


async def test_unknown_key_is_unauthenticated_without_echoing_it(store: KeyStore) -> None:
    secret = keys.generate_key()  # well formed, never stored
    with pytest.raises(Unauthenticated) as err:
        await store.authenticate(secret)
    assert err.value.code == "invalid_api_key"
    assert secret not in err.value.message
    assert secret[len(keys.PREFIX) : -4] not in err.value.message
    assert keys.fingerprint(secret) in err.value.message


@pytest.mark.parametrize("supplied", ["", "nope", "sk-sluice-typo", "sk-proj-" + "a" * 40])
async def test_malformed_keys_are_unauthenticated(store: KeyStore, supplied: str) -> None:
    with pytest.raises(Unauthenticated) as err:
        await store.authenticate(supplied)
    assert err.value.code == "invalid_api_key"
    if supplied:
        assert supplied not in err.value.message


async def test_key_hashed_under_another_server_secret_is_rejected(
    store: KeyStore, engine: AsyncEngine
) -> None:
    _, secret = await store.create_key("acme", "web")
    other = KeyStore(engine, b"another-secret")
    with pytest.raises(Unauthenticated):
        await other.authenticate(secret)


async def test_revoke_stops_authentication(store: KeyStore) -> None:
    info, secret = await store.create_key("acme", "web")
    revoked = await store.revoke_key(info.id)
    assert revoked.revoked and revoked.revoked_at is not None
    assert revoked.revoked_at.tzinfo == UTC
    with pytest.raises(Unauthenticated) as err:
        await store.authenticate(secret)
    assert err.value.code == "invalid_api_key"
    assert secret not in err.value.message
    # Revoking twice keeps the first time.
    again = await store.revoke_key(info.id)
    assert again.revoked_at == revoked.revoked_at


async def test_revoke_unknown_key_is_not_found(store: KeyStore) -> None:
    with pytest.raises(NotFound):
        await store.revoke_key("key_0000000000000000")
    secret = keys.generate_key()
    with pytest.raises(NotFound) as err:
        await store.revoke_key(secret)
    assert secret not in err.value.message


async def test_list_keys_filters_by_org_and_shows_state(store: KeyStore) -> None:
    a, _ = await store.create_key("acme", "one")
    b, _ = await store.create_key("acme", "two")
    c, _ = await store.create_key("globex", "three")
    await store.revoke_key(b.id)
    everything = await store.list_keys()
    assert {k.id for k in everything} == {a.id, b.id, c.id}
    acme = await store.list_keys("acme")
    assert [(k.id, k.revoked) for k in acme] == [(a.id, False), (b.id, True)]
    assert await store.list_keys("nobody") == []


@pytest.mark.parametrize(("org", "name"), [("", "web"), ("acme", "  "), ("x" * 201, "web")])
async def test_create_key_validates_names(store: KeyStore, org: str, name: str) -> None:
    with pytest.raises(InvalidArgument):
        await store.create_key(org, name)


async def test_losing_the_org_creation_race_reads_the_winner(
    store: KeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    winner, _ = await store.create_key("acme", "first")
    real_find = store.orgs._find_org
    calls = 0

    async def stale_then_real(name: str) -> Organization | None:
        # The first look happens "before" the winner committed: it sees no organization.
        nonlocal calls
        calls += 1
        return None if calls == 1 else await real_find(name)

    monkeypatch.setattr(store.orgs, "_find_org", stale_then_real)
    loser, _ = await store.create_key("acme", "second")
    assert calls == 2
    assert loser.org_id == winner.org_id


@pytest.fixture
def statements(engine: AsyncEngine) -> Iterator[list[str]]:
    """Every SQL statement the engine sends while the test runs."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


@pytest.mark.parametrize("supplied", ["nope", "sk-sluice-typo", keys.generate_key()[:-1] + "!"])
async def test_malformed_keys_never_reach_the_database(
    store: KeyStore, statements: list[str], supplied: str
) -> None:
    await store.create_key("acme", "web")
    statements.clear()
    with pytest.raises(Unauthenticated):
        await store.authenticate(supplied, "10.0.0.1", "smollm2")
    assert statements == []


async def test_authenticate_is_one_query(store: KeyStore, statements: list[str]) -> None:
    _, secret = await store.create_key(
        "acme", "web", allowed_ips=["10.0.0.0/8"], allowed_models=["smollm2"]
    )
    statements.clear()
    await store.authenticate(secret, "10.0.0.1", "smollm2")
    assert len(statements) == 1
