"""Key policy in `KeyStore`: stored and returned, validated, and applied by `authenticate`
(expiry, IP allowlist, allowed models), on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from services.auth import keys
from services.auth.policy import Quota
from services.auth.store import KeyStore
from services.common.errors import InvalidArgument, PermissionDenied, Unauthenticated
from tests.auth.conftest import Clock

QUOTA = Quota(rpm=60, tpm=20000, max_concurrent=4, budget_tokens=1_000_000, budget_period="month")


async def test_policy_is_stored_and_returned(store: KeyStore) -> None:
    await store.orgs.create_org("acme")
    web = await store.orgs.create_project("acme", "web")
    info, secret = await store.create_key(
        "acme",
        "web",
        project="web",
        allowed_models=["smollm2", "openai/gpt-4o"],
        allowed_ips=["10.0.0.0/8", "2001:db8::1"],
        expires_in_seconds=3600,
        quota=QUOTA,
    )
    assert info.allowed_models == ("smollm2", "openai/gpt-4o")
    assert info.allowed_ips == ("10.0.0.0/8", "2001:db8::1/128")
    assert info.expires_at is not None
    assert 3599 <= (info.expires_at - info.created_at).total_seconds() <= 3601
    assert info.quota == QUOTA
    assert info.state == "active" and info.previous_fingerprint is None

    (listed,) = await store.list_keys("acme")
    assert listed == info

    principal = await store.authenticate(secret, "10.1.2.3", "smollm2")
    assert (principal.project_id, principal.project_name) == (web.id, "web")
    assert principal.key_quota == QUOTA
    assert principal.allowed_models == ("smollm2", "openai/gpt-4o")


async def test_defaults_mean_no_limits(store: KeyStore) -> None:
    info, secret = await store.create_key("acme", "web")
    assert info.allowed_models == () and info.allowed_ips == ()
    assert info.expires_at is None and info.quota == Quota()
    principal = await store.authenticate(secret, "", "anything")
    assert principal.key_quota == Quota(budget_period="none")
    assert principal.allowed_models == ()


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"allowed_ips": ["10.0.0.0/33"]}, "allowed_ips"),
        ({"allowed_ips": ["not-an-ip"]}, "allowed_ips"),
        ({"allowed_models": [""]}, "allowed_models"),
        ({"expires_in_seconds": -1}, "expires_in_seconds"),
        ({"quota": Quota(rpm=-1)}, "quota.rpm"),
        ({"quota": Quota(budget_period="year")}, "quota.budget_period"),
    ],
)
async def test_bad_policy_is_refused_before_anything_is_created(
    store: KeyStore, kwargs: dict[str, object], param: str
) -> None:
    with pytest.raises(InvalidArgument) as err:
        await store.create_key("acme", "web", **kwargs)  # type: ignore[arg-type]
    assert err.value.param == param
    assert await store.orgs.list_orgs() == []


async def test_expiry(store: KeyStore, clock: Clock) -> None:
    _, secret = await store.create_key("acme", "web", expires_in_seconds=60)
    await store.authenticate(secret)
    clock.advance(59)
    await store.authenticate(secret)
    clock.advance(2)
    with pytest.raises(Unauthenticated) as err:
        await store.authenticate(secret)
    assert err.value.code == "invalid_api_key"
    assert "has expired" in err.value.message
    assert secret not in err.value.message
    (listed,) = await store.list_keys()
    assert listed.state == "expired" and not listed.revoked


async def test_revoked_beats_expired(store: KeyStore, clock: Clock) -> None:
    info, secret = await store.create_key("acme", "web", expires_in_seconds=60)
    await store.revoke_key(info.id)
    clock.advance(120)
    with pytest.raises(Unauthenticated) as err:
        await store.authenticate(secret)
    assert "has been revoked" in err.value.message
    (listed,) = await store.list_keys()
    assert listed.state == "revoked"


@pytest.mark.parametrize(
    ("client_ip", "allowed"),
    [
        ("10.20.30.40", True),
        ("203.0.113.9", True),
        ("::ffff:10.20.30.40", True),
        ("2001:db8:1::5", True),
        ("11.0.0.1", False),
        ("203.0.113.10", False),
        ("2001:db9::1", False),
        ("::ffff:11.0.0.1", False),
        ("", False),
        ("garbage", False),
    ],
)
async def test_ip_allowlist(store: KeyStore, client_ip: str, allowed: bool) -> None:
    info, secret = await store.create_key(
        "acme", "web", allowed_ips=["10.0.0.0/8", "203.0.113.9", "2001:db8::/32"]
    )
    if allowed:
        await store.authenticate(secret, client_ip)
        return
    with pytest.raises(PermissionDenied) as err:
        await store.authenticate(secret, client_ip)
    assert err.value.code == "ip_not_allowed"
    assert err.value.metadata == {
        "sluice-org-id": info.org_id,
        "sluice-project-id": info.project_id,
        "sluice-key-id": info.id,
    }
    assert keys.fingerprint(secret) in err.value.message
    assert secret not in err.value.message
    if client_ip and client_ip != "garbage":
        assert f"Requests from {client_ip.removeprefix('::ffff:')} are not allowed" in (
            err.value.message
        )
    else:
        assert "garbage" not in err.value.message


async def test_no_allowlist_takes_any_address(store: KeyStore) -> None:
    _, secret = await store.create_key("acme", "web")
    for client_ip in ("8.8.8.8", "::1", "", "garbage"):
        await store.authenticate(secret, client_ip)


async def test_model_allowlist_with_pinned_digests(store: KeyStore) -> None:
    info, secret = await store.create_key(
        "acme", "web", allowed_models=["smollm2", "openai/gpt-4o"]
    )
    for model in ("smollm2", "smollm2@sha256:0123abcd", "openai/gpt-4o", ""):
        await store.authenticate(secret, "", model)
    for model in ("smollm2-360m", "openai/gpt-4o-mini", "anthropic/claude"):
        with pytest.raises(PermissionDenied) as err:
            await store.authenticate(secret, "", model)
        assert err.value.code == "model_not_allowed"
        assert err.value.metadata["sluice-key-id"] == info.id
        assert err.value.metadata["sluice-project-id"] == info.project_id
        assert err.value.metadata["sluice-org-id"] == info.org_id
        assert model in err.value.message and secret not in err.value.message


async def test_ip_is_checked_before_model(store: KeyStore) -> None:
    _, secret = await store.create_key(
        "acme", "web", allowed_models=["smollm2"], allowed_ips=["10.0.0.0/8"]
    )
    with pytest.raises(PermissionDenied) as err:
        await store.authenticate(secret, "11.0.0.1", "other")
    assert err.value.code == "ip_not_allowed"
