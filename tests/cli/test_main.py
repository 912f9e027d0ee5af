"""`sluice` itself: every command group is registered, settings come from the environment, and a
failed command is one line on stderr with exit status 1."""

from __future__ import annotations

import re

import pytest

from services.cli import main
from tests.cli.conftest import Fake


def test_every_command_group_is_registered(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    listed = re.findall(r"^    (\w+)", out, re.MULTILINE)
    assert listed == ["up", "keys", "orgs", "projects", "plans", "providers", "usage", "model"]


def test_main_reads_addresses_from_the_environment(
    fake: Fake, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLUICE_AUTH_ADDR", fake.settings.auth_addr)
    monkeypatch.setenv("SLUICE_METERING_ADDR", fake.settings.metering_addr)
    fake.auth.add_org("acme")
    assert main.main(["orgs", "list"]) == 0
    assert "acme" in capsys.readouterr().out


def test_a_failed_command_is_one_line_and_exit_status_1(
    fake: Fake, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLUICE_AUTH_ADDR", fake.settings.auth_addr)
    assert main.main(["orgs", "set-plan", "nope", "pro"]) == 1
    assert capsys.readouterr() == (
        "",
        "error: unknown organization 'nope' (`sluice orgs list` shows them)\n",
    )
