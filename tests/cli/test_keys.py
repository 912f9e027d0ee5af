"""`sluice keys` against a running auth service, and when none is running."""

from __future__ import annotations

import pytest

from services.auth import keys as key_format
from services.common.settings import Settings
from services.metering.ledger import Ledger
from tests.cli.conftest import Runner


async def test_create_prints_the_secret_alone_on_the_last_line(
    stack: tuple[Settings, Ledger], sluice: Runner, capsys: pytest.CaptureFixture[str]
) -> None:
    settings, _ = stack
    assert await sluice(settings, "keys", "create", "--org", "acme", "--name", "web") == 0
    out, err = capsys.readouterr()
    secret = out.rstrip("\n").splitlines()[-1]
    assert key_format.is_well_formed(secret)
    assert "acme" in err and secret not in err


async def test_list_and_revoke(
    stack: tuple[Settings, Ledger], sluice: Runner, capsys: pytest.CaptureFixture[str]
) -> None:
    settings, _ = stack
    await sluice(settings, "keys", "create", "--org", "acme", "--name", "web")
    secret = capsys.readouterr().out.splitlines()[-1]

    assert await sluice(settings, "keys", "list", "--org", "acme") == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["id", "org", "name", "fingerprint", "created", "state"]
    key_id, org, name, fingerprint, _created, state = row.split()
    assert (org, name, fingerprint, state) == ("acme", "web", key_format.fingerprint(secret),
                                               "active")  # fmt: skip

    assert await sluice(settings, "keys", "revoke", key_id) == 0
    capsys.readouterr()
    await sluice(settings, "keys", "list")
    assert capsys.readouterr().out.splitlines()[1].split()[-1] == "revoked"


async def test_revoke_unknown_key_fails_with_one_line(
    stack: tuple[Settings, Ledger], sluice: Runner, capsys: pytest.CaptureFixture[str]
) -> None:
    settings, _ = stack
    assert await sluice(settings, "keys", "revoke", "key_nope") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "key_nope" in err


async def test_unreachable_auth_service(
    dead_addr: str, sluice: Runner, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(auth_addr=dead_addr)
    assert await sluice(settings, "keys", "list") == 1
    err = capsys.readouterr().err
    assert err == (
        f"error: auth service not reachable at {dead_addr} — start the stack with `sluice up`\n"
    )
