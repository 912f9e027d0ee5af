"""Rotation and revocation of keys in `KeyStore`: grace periods under a controlled clock,
revoking by id or by secret, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.auth import keys
from services.auth.policy import Quota
from services.auth.store import KeyStore
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, Unauthenticated
from tests.auth.conftest import Clock


async def test_rotate_keeps_the_key_and_its_policy(store: KeyStore) -> None:
    quota = Quota(rpm=5, budget_tokens=100, budget_period="day")
    info, old = await store.create_key("acme", "web", allowed_models=["smollm2"], quota=quota)
    rotated, new = await store.rotate_key(info.id, grace_seconds=60)
    assert keys.is_well_formed(new) and new != old
    assert rotated.id == info.id and rotated.created_at == info.created_at
    assert rotated.fingerprint == keys.fingerprint(new)
    assert rotated.previous_fingerprint == keys.fingerprint(old)
    assert rotated.previous_expires_at is not None
    assert rotated.quota == quota and rotated.allowed_models == ("smollm2",)
    principal = await store.authenticate(new)
    assert principal.key_id == info.id and principal.key_quota == quota


async def test_previous_secret_works_until_the_grace_ends(store: KeyStore, clock: Clock) -> None:
    info, old = await store.create_key("acme", "web")
    _, new = await store.rotate_key(info.id, grace_seconds=60)
    assert (await store.authenticate(old)).key_id == info.id
    clock.advance(59)
    assert (await store.authenticate(old)).key_id == info.id
    clock.advance(2)
    with pytest.raises(Unauthenticated) as err:
        await store.authenticate(old)
    assert err.value.code == "invalid_api_key"
    assert old not in err.value.message
    await store.authenticate(new)
    (listed,) = await store.list_keys()
    assert listed.previous_fingerprint is None and listed.previous_expires_at is None


async def test_zero_grace_stops_the_old_secret_at_once(store: KeyStore) -> None:
    info, old = await store.create_key("acme", "web")
    _, new = await store.rotate_key(info.id)
    with pytest.raises(Unauthenticated):
        await store.authenticate(old)
    await store.authenticate(new)


async def test_rotating_again_ends_the_earlier_grace(store: KeyStore) -> None:
    info, first = await store.create_key("acme", "web")
    _, second = await store.rotate_key(info.id, grace_seconds=3600)
    rotated, third = await store.rotate_key(second, grace_seconds=3600)
    with pytest.raises(Unauthenticated):
        await store.authenticate(first)
    await store.authenticate(second)
    await store.authenticate(third)
    assert rotated.previous_fingerprint == keys.fingerprint(second)


async def test_revoke_kills_current_and_previous_secrets(store: KeyStore) -> None:
    info, old = await store.create_key("acme", "web")
    _, new = await store.rotate_key(info.id, grace_seconds=3600)
    revoked = await store.revoke_key(info.id)
    assert revoked.state == "revoked" and revoked.previous_fingerprint is None
    for secret in (old, new):
        with pytest.raises(Unauthenticated) as err:
            await store.authenticate(secret)
        assert "has been revoked" in err.value.message


async def test_rotating_a_revoked_key_is_a_failed_precondition(store: KeyStore) -> None:
    info, secret = await store.create_key("acme", "web")
    await store.revoke_key(info.id)
    with pytest.raises(FailedPrecondition):
        await store.rotate_key(info.id, grace_seconds=60)
    with pytest.raises(Unauthenticated):
        await store.authenticate(secret)


async def test_rotate_by_secret_and_unknown_refs(store: KeyStore) -> None:
    info, old = await store.create_key("acme", "web")
    rotated, new = await store.rotate_key(old, grace_seconds=60)
    assert rotated.id == info.id
    # Only the current secret names the key for a rotation.
    with pytest.raises(NotFound) as err:
        await store.rotate_key(old)
    assert old not in err.value.message
    with pytest.raises(NotFound):
        await store.rotate_key("key_0000000000000000")
    with pytest.raises(InvalidArgument):
        await store.rotate_key(info.id, grace_seconds=-1)
    await store.authenticate(new)


async def test_revoke_by_secret(store: KeyStore) -> None:
    info, secret = await store.create_key("acme", "web")
    other, other_secret = await store.create_key("acme", "other")
    revoked = await store.revoke_key(secret)
    assert revoked.id == info.id and revoked.revoked
    with pytest.raises(Unauthenticated):
        await store.authenticate(secret)
    await store.authenticate(other_secret)
    unknown = keys.generate_key()
    with pytest.raises(NotFound) as err:
        await store.revoke_key(unknown)
    assert unknown not in err.value.message
    assert unknown[len(keys.PREFIX) : -4] not in err.value.message


async def test_revoke_by_previous_secret_during_grace(store: KeyStore, clock: Clock) -> None:
    info, old = await store.create_key("acme", "web")
    _, new = await store.rotate_key(info.id, grace_seconds=60)
    assert (await store.revoke_key(old)).id == info.id
    with pytest.raises(Unauthenticated):
        await store.authenticate(new)


async def test_previous_secret_after_grace_does_not_name_the_key(
    store: KeyStore, clock: Clock
) -> None:
    info, old = await store.create_key("acme", "web")
    _, new = await store.rotate_key(info.id, grace_seconds=60)
    clock.advance(61)
    with pytest.raises(NotFound):
        await store.revoke_key(old)
    await store.authenticate(new)


async def test_not_found_never_echoes_foreign_secrets(store: KeyStore) -> None:
    for ref in ("sk-proj-abcdefghijklmnopqrstuvwxyz0123", "sk-sluice-typo-abcdefghijkl"):
        with pytest.raises(NotFound) as err:
            await store.revoke_key(ref)
        assert ref not in err.value.message


async def test_rotation_stores_only_hashes(store: KeyStore, engine: AsyncEngine) -> None:
    info, old = await store.create_key("acme", "web")
    _, new = await store.rotate_key(info.id, grace_seconds=60)
    async with engine.connect() as conn:
        row = (await conn.execute(text("SELECT * FROM api_keys"))).one()
    dumped = repr(tuple(row))
    assert old not in dumped and new not in dumped
