"""`sluice orgs` against fake auth and metering services."""

from __future__ import annotations

import pytest

from services.pb.auth.v1 import auth_pb2
from services.pb.metering.v1 import metering_pb2
from tests.cli.conftest import Fake, SyncRunner


def test_create_with_a_plan(
    fake: Fake, cli: SyncRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.metering.plans["pro"] = metering_pb2.Plan(name="pro", monthly_tokens=1000)
    assert cli(fake.settings, "orgs", "create", "acme", "--plan", "pro") == 0
    assert fake.auth.sent("CreateOrg") == [auth_pb2.CreateOrgRequest(name="acme")]
    (org,) = fake.auth.orgs
    assert fake.metering.sent("SetPolicy") == [
        metering_pb2.Policy(scope="org", scope_id=org.id, plan="pro")
    ]
    out = capsys.readouterr().out
    assert f"Created org {org.id} (acme)" in out and "on plan pro" in out


def test_create_without_a_plan_sets_no_policy(fake: Fake, cli: SyncRunner) -> None:
    assert cli(fake.settings, "orgs", "create", "acme") == 0
    assert fake.metering.calls == []


def test_create_with_an_unknown_plan_creates_nothing(
    fake: Fake, cli: SyncRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.metering.plans["pro"] = metering_pb2.Plan(name="pro")
    assert cli(fake.settings, "orgs", "create", "acme", "--plan", "gold") == 1
    assert capsys.readouterr().err == "error: unknown plan 'gold' (plans: pro)\n"
    assert fake.auth.calls == []


def test_create_existing_org_fails_with_one_line(
    fake: Fake, cli: SyncRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.auth.add_org("acme")
    assert cli(fake.settings, "orgs", "create", "acme") == 1
    assert capsys.readouterr().err == "error: auth service: org 'acme' exists\n"


def test_list_joins_each_org_policy(
    fake: Fake, cli: SyncRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    acme, beta = fake.auth.add_org("acme"), fake.auth.add_org("beta")
    fake.metering.policies[("org", acme.id)] = metering_pb2.Policy(
        scope="org", scope_id=acme.id, plan="pro", quota=metering_pb2.Quota(rpm=100)
    )
    assert cli(fake.settings, "orgs", "list") == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split() == ["id", "name", "created", "plan", "limits"]
    assert [r.split() for r in rows] == [
        [acme.id, "acme", "2024-05-01T12:00:00Z", "pro", "rpm=100"],
        [beta.id, "beta", "2024-05-01T12:00:00Z", "-", "-"],
    ]
    assert fake.metering.sent("GetPolicy") == [
        metering_pb2.GetPolicyRequest(scope="org", scope_id=acme.id),
        metering_pb2.GetPolicyRequest(scope="org", scope_id=beta.id),
    ]


def test_set_plan_keeps_the_limits(fake: Fake, cli: SyncRunner) -> None:
    org = fake.auth.add_org("acme")
    fake.metering.plans["pro"] = metering_pb2.Plan(name="pro")
    quota = metering_pb2.Quota(rpm=5, budget_tokens=10, budget_period="day")
    fake.metering.policies[("org", org.id)] = metering_pb2.Policy(
        scope="org", scope_id=org.id, quota=quota
    )
    assert cli(fake.settings, "orgs", "set-plan", "acme", "pro") == 0
    assert fake.metering.sent("SetPolicy") == [
        metering_pb2.Policy(scope="org", scope_id=org.id, plan="pro", quota=quota)
    ]
    # An id works as well as a name.
    assert cli(fake.settings, "orgs", "set-plan", org.id, "") == 0
    assert fake.metering.sent("SetPolicy")[-1].plan == ""


def test_set_limits_changes_only_the_given_fields(fake: Fake, cli: SyncRunner) -> None:
    org = fake.auth.add_org("acme")
    fake.metering.plans["pro"] = metering_pb2.Plan(name="pro")
    fake.metering.policies[("org", org.id)] = metering_pb2.Policy(
        scope="org", scope_id=org.id, plan="pro",
        quota=metering_pb2.Quota(rpm=5, tpm=50, budget_tokens=10, budget_period="day"),
    )  # fmt: skip
    assert cli(fake.settings, "orgs", "set-limits", "acme", "--rpm", "0", "--max-concurrent",
               "3", "--budget-tokens", "99", "--budget-period", "month") == 0  # fmt: skip
    assert fake.metering.sent("SetPolicy") == [
        metering_pb2.Policy(
            scope="org", scope_id=org.id, plan="pro",
            quota=metering_pb2.Quota(tpm=50, max_concurrent=3, budget_tokens=99,
                                     budget_period="month"),
        )
    ]  # fmt: skip


def test_set_limits_needs_a_change(
    fake: Fake, cli: SyncRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.auth.add_org("acme")
    assert cli(fake.settings, "orgs", "set-limits", "acme") == 1
    assert capsys.readouterr().err.startswith("error: nothing to change")
    assert fake.metering.calls == []


@pytest.mark.parametrize(
    "argv", [("set-plan", "nope", "pro"), ("set-limits", "nope", "--rpm", "1")]
)
def test_unknown_org(
    fake: Fake, cli: SyncRunner, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    fake.auth.add_org("acme")
    assert cli(fake.settings, "orgs", *argv) == 1
    assert capsys.readouterr() == (
        "",
        "error: unknown organization 'nope' (`sluice orgs list` shows them)\n",
    )
    assert fake.metering.calls == []
