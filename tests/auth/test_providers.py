"""Provider credentials in `ProviderStore` on SQLite and PostgreSQL: encrypted at rest, listed
without keys, replaced by name, handed out decrypted, and refused under a wrong data key."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.auth.crypto import CredentialKeyMismatch, key_version
from services.auth.providers import ProviderStore
from services.auth.store import KeyStore
from services.common.errors import InvalidArgument, NotFound
from tests.auth.conftest import DATA_KEY, Clock

OPENAI_KEY = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789"
ANTHROPIC_KEY = "sk-ant-api03-0123456789abcdefghijklmnopqrstuv"


async def test_add_list_and_get_round_trip(store: KeyStore, providers: ProviderStore) -> None:
    org = await store.orgs.create_org("acme")
    info = await providers.add_provider("acme", "openai", OPENAI_KEY)
    assert info.id.startswith("prov_") and len(info.id) == 5 + 16
    assert (info.org_id, info.org_name, info.provider, info.name) == (
        org.id,
        "acme",
        "openai",
        "openai",
    )
    assert info.fingerprint == "..." + OPENAI_KEY[-4:]
    assert await providers.list_providers() == [info]
    assert await providers.list_providers(org.id) == [info]
    assert await providers.list_providers("nobody") == []

    cred = await providers.get_credential(org.id, "openai")
    assert (cred.id, cred.provider, cred.api_key) == (info.id, "openai", OPENAI_KEY)
    assert OPENAI_KEY not in repr(cred)


async def test_ciphertext_in_the_database_hides_the_key(
    store: KeyStore, providers: ProviderStore, engine: AsyncEngine
) -> None:
    await store.orgs.create_org("acme")
    await providers.add_provider("acme", "anthropic", ANTHROPIC_KEY, name="team")
    async with engine.connect() as conn:
        row = (await conn.execute(text("SELECT * FROM provider_credentials"))).one()
    stored = b"".join(v if isinstance(v, bytes) else str(v).encode() for v in row._mapping.values())
    assert ANTHROPIC_KEY.encode() not in stored
    assert ANTHROPIC_KEY[4:-4].encode() not in stored
    assert DATA_KEY not in stored and DATA_KEY.hex().encode() not in stored
    assert len(row._mapping["nonce"]) == 12
    assert row._mapping["key_version"] == key_version(DATA_KEY)


async def test_same_name_replaces_and_newest_wins(
    store: KeyStore, providers: ProviderStore, clock: Clock
) -> None:
    org = await store.orgs.create_org("acme")
    first = await providers.add_provider("acme", "openai", OPENAI_KEY)
    clock.advance(1)
    second = await providers.add_provider(org.id, "openai", OPENAI_KEY[::-1])
    assert second.id != first.id
    assert [p.id for p in await providers.list_providers("acme")] == [second.id]
    assert (await providers.get_credential(org.id, "openai")).api_key == OPENAI_KEY[::-1]

    clock.advance(1)
    third = await providers.add_provider("acme", "openai", OPENAI_KEY, name="backup")
    cred = await providers.get_credential("acme", "openai")
    assert (cred.id, cred.api_key) == (third.id, OPENAI_KEY)
    assert len(await providers.list_providers()) == 2


async def test_remove(store: KeyStore, providers: ProviderStore) -> None:
    org = await store.orgs.create_org("acme")
    info = await providers.add_provider("acme", "openai", OPENAI_KEY)
    assert await providers.remove_provider(info.id) == info
    assert await providers.list_providers() == []
    with pytest.raises(NotFound):
        await providers.remove_provider(info.id)
    with pytest.raises(NotFound) as err:
        await providers.get_credential(org.id, "openai")
    assert err.value.code == "provider_not_configured"


async def test_not_configured_is_per_org_and_provider(
    store: KeyStore, providers: ProviderStore
) -> None:
    acme = await store.orgs.create_org("acme")
    globex = await store.orgs.create_org("globex")
    await providers.add_provider("acme", "openai", OPENAI_KEY)
    for org_id, provider in ((acme.id, "anthropic"), (globex.id, "openai"), ("nope", "openai")):
        with pytest.raises(NotFound) as err:
            await providers.get_credential(org_id, provider)
        assert err.value.code == "provider_not_configured"


@pytest.mark.parametrize(
    ("org", "provider", "api_key", "error", "param"),
    [
        ("nobody", "openai", OPENAI_KEY, NotFound, "org"),
        ("acme", "azure", OPENAI_KEY, InvalidArgument, "provider"),
        ("acme", "openai", "", InvalidArgument, "api_key"),
        ("acme", "openai", "short", InvalidArgument, "api_key"),
        ("acme", "openai", "sk-has a space inside", InvalidArgument, "api_key"),
        ("acme", "openai", "sk-ünïcode-0123456789", InvalidArgument, "api_key"),
    ],
)
async def test_add_is_validated_without_echoing_the_key(
    store: KeyStore,
    providers: ProviderStore,
    org: str,
    provider: str,
    api_key: str,
    error: type[Exception],
    param: str,
) -> None:
    await store.orgs.create_org("acme")
    with pytest.raises(error) as err:
        await providers.add_provider(org, provider, api_key)
    assert getattr(err.value, "param", None) == param
    if api_key:
        assert api_key not in str(err.value)


async def test_wrong_data_key_fails_cleanly(
    store: KeyStore, providers: ProviderStore, engine: AsyncEngine
) -> None:
    org = await store.orgs.create_org("acme")
    info = await providers.add_provider("acme", "openai", OPENAI_KEY)
    wrong = bytes(32)
    other = ProviderStore(engine, wrong)
    with pytest.raises(CredentialKeyMismatch) as err:
        await other.get_credential(org.id, "openai")
    message = err.value.message
    assert info.id in message
    assert key_version(DATA_KEY) in message and key_version(wrong) in message
    assert OPENAI_KEY not in message and DATA_KEY.hex() not in message
    # Listing needs no key at all.
    assert [p.id for p in await other.list_providers()] == [info.id]


async def test_ciphertext_moved_to_another_row_does_not_decrypt(
    store: KeyStore, providers: ProviderStore, engine: AsyncEngine
) -> None:
    acme = await store.orgs.create_org("acme")
    await store.orgs.create_org("globex")
    a = await providers.add_provider("acme", "openai", OPENAI_KEY)
    b = await providers.add_provider("globex", "openai", "sk-globex-0123456789abcdef")
    async with engine.begin() as conn:
        row = (
            await conn.execute(
                text("SELECT ciphertext, nonce FROM provider_credentials WHERE id = :id"),
                {"id": b.id},
            )
        ).one()
        await conn.execute(
            text("UPDATE provider_credentials SET ciphertext = :c, nonce = :n WHERE id = :id"),
            {"c": row[0], "n": row[1], "id": a.id},
        )
    with pytest.raises(CredentialKeyMismatch):
        await providers.get_credential(acme.id, "openai")
