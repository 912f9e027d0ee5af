"""`sluice keys`: the requests each command sends and what it prints (fake auth service), against
a running auth service, and when none is running."""

from __future__ import annotations

import pytest

from services.auth import keys as key_format
from services.common.settings import Settings
from services.metering.ledger import Ledger
from services.pb.auth.v1 import auth_pb2
from tests.cli.conftest import Fake, Runner, SyncRunner

# --- against the fake auth service -----------------------------------------------------------


def test_create_sends_the_whole_policy(
    fake: Fake, cli: SyncRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.auth.add_project(fake.auth.add_org("acme"), "web")
    assert cli(fake.settings, "keys", "create", "--org", "acme", "--project", "web",
               "--name", "frontend", "--models", "m1,m2", "--models", "m3",
               "--rpm", "60", "--tpm", "10000", "--max-concurrent", "4",
               "--budget-tokens", "1000000", "--budget-period", "month",
               "--allow-ip", "10.0.0.0/8,192.168.1.7", "--allow-ip", "2001:db8:0::/32",
               "--expires-in", "1h30m") == 0  # fmt: skip
    (sent,) = fake.auth.sent("CreateKey")
    assert sent == auth_pb2.CreateKeyRequest(
        org="acme", name="frontend", project="web", allowed_models=["m1", "m2", "m3"],
        allowed_ips=["10.0.0.0/8", "192.168.1.7", "2001:db8::/32"], expires_in_seconds=5400,
        quota=auth_pb2.Quota(rpm=60, tpm=10000, max_concurrent=4, budget_tokens=1000000,
                             budget_period="month"),
    )  # fmt: skip
    assert "project web" in capsys.readouterr().err


def test_create_in_an_unknown_project_fails_with_one_line(
    fake: Fake, cli: SyncRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("keys", "create", "--org", "acme", "--project", "nope", "--name", "k")
    assert cli(fake.settings, *args) == 1
    assert capsys.readouterr() == ("", "error: auth service: no project 'nope'\n")


def test_create_prints_the_secret_alone_on_the_last_stdout_line(
    fake: Fake, cli: SyncRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(fake.settings, "keys", "create", "--org", "acme", "--name", "web",
               "--expires-in", "30d") == 0  # fmt: skip
    out, err = capsys.readouterr()
    (secret,) = fake.auth.secrets
    assert out == secret + "\n"
    assert "acme" in err and "expires 2024-05-31T12:00:00Z" in err and secret not in err
    (sent,) = fake.auth.sent("CreateKey")
    assert sent.quota == auth_pb2.Quota() and not sent.allowed_ips and not sent.project


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--expires-in", "5x"], "invalid duration '5x'"),
        (["--expires-in", "0s"], "must be more than zero"),
        (["--allow-ip", "10.0.0.1/8"], "has host bits set"),
        (["--allow-ip", "10.0.0.0/8,"], "empty item"),
        (["--allow-ip", "example.com"], "invalid address or CIDR 'example.com'"),
        (["--rpm", "-1"], "out of range"),
        (["--budget-period", "week"], "invalid choice: 'week'"),
    ],
)
def test_create_refuses_malformed_flags(
    fake: Fake,
    cli: SyncRunner,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    message: str,
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli(fake.settings, "keys", "create", "--org", "acme", "--name", "web", *flags)
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert fake.auth.calls == []


def test_create_wants_budget_tokens_and_period_together(
    fake: Fake, cli: SyncRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(fake.settings, "keys", "create", "--org", "a", "--name", "k",
               "--budget-tokens", "100") == 1  # fmt: skip
    assert capsys.readouterr().err.startswith("error: --budget-tokens and --budget-period go")
    assert fake.auth.calls == []


def test_list_shows_policy_and_never_secrets(
    fake: Fake, cli: SyncRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    cli(fake.settings, "keys", "create", "--org", "acme", "--name", "web", "--models", "m1,m2",
        "--allow-ip", "10.0.0.0/8", "--rpm", "60", "--budget-tokens", "5000",
        "--budget-period", "day")  # fmt: skip
    cli(fake.settings, "keys", "create", "--org", "beta", "--name", "cron")
    secret_a, secret_b = fake.auth.secrets
    capsys.readouterr()

    assert cli(fake.settings, "keys", "list", "--org", "acme", "--project", "default") == 0
    out = capsys.readouterr().out
    header, row = out.splitlines()
    assert header.split() == ["id", "org", "project", "name", "fingerprint", "created",
                              "expires", "state", "models", "ips", "limits"]  # fmt: skip
    assert row.split()[1:] == [
        "acme", "default", "web", "..." + secret_a[-4:], "2024-05-01T12:00:00Z", "never",
        "active", "m1,m2", "10.0.0.0/8", "rpm=60,budget=5000/day",
    ]  # fmt: skip
    assert secret_a not in out and secret_b not in out
    assert fake.auth.sent("ListKeys") == [auth_pb2.ListKeysRequest(org="acme", project="default")]

    assert cli(fake.settings, "keys", "list") == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [r.split()[-3:] for r in rows] == [["m1,m2", "10.0.0.0/8", "rpm=60,budget=5000/day"],
                                              ["*", "*", "-"]]  # fmt: skip


def test_revoke_by_secret_never_echoes_it(
    fake: Fake, cli: SyncRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    cli(fake.settings, "keys", "create", "--org", "acme", "--name", "web")
    (secret,) = fake.auth.secrets
    capsys.readouterr()
    assert cli(fake.settings, "keys", "revoke", secret) == 0
    out, err = capsys.readouterr()
    assert out.startswith("Revoked key key_") and secret not in out + err
    assert fake.auth.sent("RevokeKey") == [auth_pb2.RevokeKeyRequest(key_id=secret)]

    assert cli(fake.settings, "keys", "revoke", "sk-sluice-nope") == 1
    assert "sk-sluice-nope" not in capsys.readouterr().err


def test_rotate_prints_the_new_secret_and_when_the_old_one_stops(
    fake: Fake, cli: SyncRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    cli(fake.settings, "keys", "create", "--org", "acme", "--name", "web")
    (old,) = fake.auth.secrets
    key_id = fake.auth.secrets[old]
    capsys.readouterr()

    assert cli(fake.settings, "keys", "rotate", key_id) == 0
    out, err = capsys.readouterr()
    new = out.rstrip("\n").splitlines()[-1]
    assert new != old and fake.auth.secrets[new] == key_id
    assert f"(...{old[-4:]}) keeps working until 2024-05-02T12:00:00Z" in err
    assert new not in err and old not in out + err
    expected = auth_pb2.RotateKeyRequest(key_id=key_id, grace_seconds=86400)
    assert fake.auth.sent("RotateKey") == [expected]

    assert cli(fake.settings, "keys", "rotate", new, "--grace", "0") == 0
    out, err = capsys.readouterr()
    assert "stopped working at once" in err
    assert fake.auth.sent("RotateKey")[-1].grace_seconds == 0


def test_rotate_unknown_key(
    fake: Fake, cli: SyncRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(fake.settings, "keys", "rotate", "key_nope", "--grace", "1h") == 1
    assert capsys.readouterr() == ("", "error: auth service: no API key with id 'key_nope'\n")


# --- against the running auth service --------------------------------------------------------


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
    assert header.split()[:6] == ["id", "org", "project", "name", "fingerprint", "created"]
    key_id, org, _project, name, fingerprint, _created, _expires, state, *_ = row.split()
    assert (org, name, fingerprint, state) == ("acme", "web", key_format.fingerprint(secret),
                                               "active")  # fmt: skip

    assert await sluice(settings, "keys", "revoke", key_id) == 0
    capsys.readouterr()
    await sluice(settings, "keys", "list")
    assert capsys.readouterr().out.splitlines()[1].split()[7] == "revoked"


async def test_revoke_unknown_key_fails_with_one_line(
    stack: tuple[Settings, Ledger], sluice: Runner, capsys: pytest.CaptureFixture[str]
) -> None:
    settings, _ = stack
    assert await sluice(settings, "keys", "revoke", "key_nope") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: auth service: ")


async def test_unreachable_auth_service(
    dead_addr: str, sluice: Runner, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(auth_addr=dead_addr)
    assert await sluice(settings, "keys", "list") == 1
    err = capsys.readouterr().err
    assert err == (
        f"error: auth service not reachable at {dead_addr} — start the stack with `sluice up`\n"
    )
