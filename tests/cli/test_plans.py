"""`sluice plans` against a fake metering service."""

from __future__ import annotations

import pytest

from services.common.settings import Settings
from services.pb.metering.v1 import metering_pb2
from tests.cli.conftest import Fake, SyncRunner


def test_set_creates_then_changes_only_the_given_fields(
    fake: Fake, cli: SyncRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(fake.settings, "plans", "set", "pro", "--monthly-tokens", "1000000",
               "--rpm", "60", "--max-context", "8192") == 0  # fmt: skip
    assert capsys.readouterr().out.startswith("Created plan pro:")
    assert cli(fake.settings, "plans", "set", "pro", "--rpm", "0", "--tpm", "5000") == 0
    assert capsys.readouterr().out.startswith("Updated plan pro:")
    assert fake.metering.sent("PutPlan") == [
        metering_pb2.Plan(name="pro", monthly_tokens=1000000, rpm=60, max_context=8192),
        metering_pb2.Plan(name="pro", monthly_tokens=1000000, tpm=5000, max_context=8192),
    ]


def test_list(fake: Fake, cli: SyncRunner, capsys: pytest.CaptureFixture[str]) -> None:
    fake.metering.plans["pro"] = metering_pb2.Plan(name="pro", monthly_tokens=10, rpm=5)
    fake.metering.plans["free"] = metering_pb2.Plan(name="free", max_concurrent=1)
    assert cli(fake.settings, "plans", "list") == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split() == [
        "name", "monthly_tokens", "rpm", "tpm", "max_concurrent", "max_context",
    ]  # fmt: skip
    assert [r.split() for r in rows] == [
        ["free", "-", "-", "-", "1", "-"],
        ["pro", "10", "5", "-", "-", "-"],
    ]


def test_unreachable_metering(
    dead_addr: str, cli: SyncRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(Settings(metering_addr=dead_addr), "plans", "list") == 1
    assert capsys.readouterr().err.startswith(
        f"error: metering service not reachable at {dead_addr}"
    )
