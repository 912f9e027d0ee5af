"""`sluice providers` against a fake auth service, and `rekey` with a stand-in re-encryption."""

from __future__ import annotations

import io
import sys
import types
from pathlib import Path

import pytest

from services.common.settings import Settings
from services.pb.auth.v1 import auth_pb2
from tests.cli.conftest import Fake, SyncRunner

KEY = "sk-proj-abcdefghijklmnopqrstuvwxyzx9Qz"


@pytest.fixture(autouse=True)
def _no_inherited_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLUICE_PROVIDER_API_KEY", raising=False)
    monkeypatch.delenv("SLUICE_CREDENTIALS_KEY", raising=False)


def _add(fake: Fake, cli: SyncRunner, *extra: str) -> int:
    return cli(fake.settings, "providers", "add", "--org", "acme", "--provider", "openai", *extra)


def test_add_from_the_environment(
    fake: Fake, cli: SyncRunner, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.auth.add_org("acme")
    monkeypatch.setenv("SLUICE_PROVIDER_API_KEY", KEY)
    assert _add(fake, cli, "--name", "main") == 0
    assert fake.auth.sent("AddProvider") == [
        auth_pb2.AddProviderRequest(org="acme", provider="openai", api_key=KEY, name="main")
    ]
    out, err = capsys.readouterr()
    assert "...x9Qz" in out and KEY not in out + err and err == ""


def test_add_from_stdin(
    fake: Fake, cli: SyncRunner, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.auth.add_org("acme")
    monkeypatch.setenv("SLUICE_PROVIDER_API_KEY", "ignored-when-a-flag-is-given")
    monkeypatch.setattr(sys, "stdin", io.StringIO(KEY + "\n"))
    assert _add(fake, cli, "--api-key", "-") == 0
    assert fake.auth.sent("AddProvider")[0].api_key == KEY
    out, err = capsys.readouterr()
    assert KEY not in out + err


def test_add_from_the_command_line_warns_about_history(
    fake: Fake, cli: SyncRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.auth.add_org("acme")
    assert _add(fake, cli, "--api-key", KEY) == 0
    out, err = capsys.readouterr()
    assert "shell history" in err and KEY not in out + err


@pytest.mark.parametrize(
    ("stdin", "message"),
    [("", "no provider key"), ("\n", "no provider key"), ("a b\n", "one word on one line")],
)
def test_add_refuses_a_missing_or_odd_key(
    fake: Fake,
    cli: SyncRunner,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    stdin: str,
    message: str,
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    assert _add(fake, cli, "--api-key", "-") == 1
    assert message in capsys.readouterr().err
    assert fake.auth.calls == []


def test_add_with_no_key_at_all(
    fake: Fake, cli: SyncRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _add(fake, cli) == 1
    assert capsys.readouterr().err.startswith("error: no provider key: give --api-key -")


def test_add_to_unknown_org_never_echoes_the_key(
    fake: Fake, cli: SyncRunner, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLUICE_PROVIDER_API_KEY", KEY)
    assert _add(fake, cli) == 1
    assert capsys.readouterr().err == "error: auth service: no organization 'acme'\n"

    monkeypatch.setenv("SLUICE_PROVIDER_API_KEY", "bad-" + KEY)
    assert _add(fake, cli) == 1
    assert capsys.readouterr().err == "error: auth service: malformed key [redacted]\n"


def test_add_unknown_provider_is_a_usage_error(fake: Fake, cli: SyncRunner) -> None:
    with pytest.raises(SystemExit):
        cli(fake.settings, "providers", "add", "--org", "acme", "--provider", "mistral")


def test_list_and_remove(fake: Fake, cli: SyncRunner, capsys: pytest.CaptureFixture[str]) -> None:
    acme = fake.auth.add_org("acme")
    fake.auth.add_org("beta")
    for org in ("acme", "beta"):
        cli(fake.settings, "providers", "add", "--org", org, "--provider", "anthropic",
            "--api-key", KEY)  # fmt: skip
    capsys.readouterr()

    assert cli(fake.settings, "providers", "list", "--org", "acme") == 0
    out = capsys.readouterr().out
    header, row = out.splitlines()
    assert header.split() == ["id", "org", "provider", "name", "fingerprint", "created"]
    provider_id, *cells = row.split()
    assert cells == ["acme", "anthropic", "anthropic", "...x9Qz", "2024-05-01T12:00:00Z"]
    assert KEY not in out
    assert fake.auth.sent("ListProviders") == [auth_pb2.ListProvidersRequest(org=acme.id)]

    assert cli(fake.settings, "providers", "remove", provider_id) == 0
    assert f"({provider_id}, anthropic) of org acme" in capsys.readouterr().out
    assert cli(fake.settings, "providers", "remove", provider_id) == 1
    assert capsys.readouterr().err.startswith("error: auth service: no provider credential")


class Rekey:
    """A stand-in for `services.auth.rekey.rekey_command` that records its arguments."""

    def __init__(self, new: bytes) -> None:
        self.new = new
        self.calls: list[tuple[Settings, bytes | None]] = []

    def __call__(self, settings: Settings, new_key: bytes | None) -> tuple[int, bytes]:
        self.calls.append((settings, new_key))
        return 3, new_key or self.new


@pytest.fixture
def rekey(monkeypatch: pytest.MonkeyPatch) -> Rekey:
    stand_in = Rekey(bytes(range(32)))
    module = types.ModuleType("services.auth.rekey")
    module.rekey_command = stand_in  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "services.auth.rekey", module)
    return stand_in


def test_rekey_with_a_key_file_says_the_file_was_replaced(
    cli: SyncRunner, capsys: pytest.CaptureFixture[str], rekey: Rekey, tmp_path: Path
) -> None:
    path = tmp_path / "new_key"
    path.write_text("ab" * 32 + "\n")
    settings = Settings(data_dir=tmp_path)
    assert cli(settings, "providers", "rekey", "--new-key-file", str(path)) == 0
    assert rekey.calls == [(settings, bytes([0xAB]) * 32)]
    out, err = capsys.readouterr()
    assert out == (
        f"Re-encrypted 3 provider credentials.\n"
        f"The credentials key file in {tmp_path} was replaced.\n"
    )
    assert "ab" * 32 not in out + err


def test_rekey_prints_the_new_key_when_it_comes_from_the_environment(
    cli: SyncRunner,
    capsys: pytest.CaptureFixture[str],
    rekey: Rekey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SLUICE_CREDENTIALS_KEY", "00" * 32)
    assert cli(Settings(), "providers", "rekey") == 0
    assert rekey.calls[0][1] is None
    out, err = capsys.readouterr()
    assert out == bytes(range(32)).hex() + "\n"
    assert "Re-encrypted 3 provider credentials." in err and "SLUICE_CREDENTIALS_KEY" in err


def test_rekey_accepts_a_raw_key_file(cli: SyncRunner, rekey: Rekey, tmp_path: Path) -> None:
    raw = bytes(range(200, 232))
    (tmp_path / "raw").write_bytes(raw)
    assert cli(Settings(data_dir=tmp_path), "providers", "rekey", "--new-key-file",
               str(tmp_path / "raw")) == 0  # fmt: skip
    assert rekey.calls[0][1] == raw


@pytest.mark.parametrize(
    ("content", "message"), [(b"too short", "must hold a 32-byte key"), (None, "cannot read")]
)
def test_rekey_refuses_a_bad_key_file(
    cli: SyncRunner,
    capsys: pytest.CaptureFixture[str],
    rekey: Rekey,
    tmp_path: Path,
    content: bytes | None,
    message: str,
) -> None:
    path = tmp_path / "new_key"
    if content is not None:
        path.write_bytes(content)
    assert cli(Settings(), "providers", "rekey", "--new-key-file", str(path)) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert rekey.calls == []
