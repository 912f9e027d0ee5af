"""`sluice projects` against fake auth and metering services."""

from __future__ import annotations

import pytest

from services.pb.auth.v1 import auth_pb2
from services.pb.metering.v1 import metering_pb2
from tests.cli.conftest import Fake, SyncRunner


def test_create_with_a_budget(
    fake: Fake, cli: SyncRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.auth.add_org("acme")
    assert cli(fake.settings, "projects", "create", "--org", "acme", "--name", "web",
               "--budget-tokens", "5000", "--budget-period", "day") == 0  # fmt: skip
    assert fake.auth.sent("CreateProject") == [
        auth_pb2.CreateProjectRequest(org="acme", name="web")
    ]
    project = fake.auth.projects[-1]
    assert fake.metering.sent("SetPolicy") == [
        metering_pb2.Policy(
            scope="project", scope_id=project.id,
            quota=metering_pb2.Quota(budget_tokens=5000, budget_period="day"),
        )
    ]  # fmt: skip
    out = capsys.readouterr().out
    assert f"Created project {project.id} (web) in org acme." in out
    assert "budget=5000/day" in out


def test_create_without_a_budget(fake: Fake, cli: SyncRunner) -> None:
    fake.auth.add_org("acme")
    assert cli(fake.settings, "projects", "create", "--org", "acme", "--name", "web") == 0
    assert fake.metering.calls == []


def test_create_with_half_a_budget_creates_nothing(
    fake: Fake, cli: SyncRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("projects", "create", "--org", "acme", "--name", "web", "--budget-period", "day")
    assert cli(fake.settings, *args) == 1
    assert "go together" in capsys.readouterr().err
    assert fake.auth.calls == []


def test_create_in_unknown_org(
    fake: Fake, cli: SyncRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(fake.settings, "projects", "create", "--org", "nope", "--name", "web") == 1
    assert capsys.readouterr().err == "error: auth service: no organization 'nope'\n"


def test_list(fake: Fake, cli: SyncRunner, capsys: pytest.CaptureFixture[str]) -> None:
    acme = fake.auth.add_org("acme")
    fake.auth.add_org("beta")
    web = fake.auth.add_project(acme, "web")
    fake.metering.policies[("project", web.id)] = metering_pb2.Policy(
        scope="project", scope_id=web.id,
        quota=metering_pb2.Quota(budget_tokens=7, budget_period="month"),
    )  # fmt: skip
    assert cli(fake.settings, "projects", "list", "--org", "acme") == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split() == ["id", "org", "name", "default", "created", "limits"]
    assert [r.split()[1:4] + r.split()[-1:] for r in rows] == [
        ["acme", "default", "yes", "-"],
        ["acme", "web", "no", "budget=7/month"],
    ]
    assert fake.auth.sent("ListProjects") == [auth_pb2.ListProjectsRequest(org=acme.id)]

    assert cli(fake.settings, "projects", "list") == 0
    assert len(capsys.readouterr().out.splitlines()) == 4


def test_set_budget_keeps_the_other_limits(fake: Fake, cli: SyncRunner) -> None:
    acme = fake.auth.add_org("acme")
    beta = fake.auth.add_org("beta")
    fake.auth.add_project(beta, "web")
    web = fake.auth.add_project(acme, "web")
    fake.metering.policies[("project", web.id)] = metering_pb2.Policy(
        scope="project", scope_id=web.id, quota=metering_pb2.Quota(rpm=9)
    )
    assert cli(fake.settings, "projects", "set-budget", "web", "--org", "acme",
               "--budget-tokens", "100", "--budget-period", "none") == 0  # fmt: skip
    assert fake.metering.sent("SetPolicy") == [
        metering_pb2.Policy(
            scope="project", scope_id=web.id,
            quota=metering_pb2.Quota(rpm=9, budget_tokens=100, budget_period="none"),
        )
    ]  # fmt: skip


def test_set_budget_needs_both_flags(fake: Fake, cli: SyncRunner) -> None:
    with pytest.raises(SystemExit):
        cli(fake.settings, "projects", "set-budget", "web", "--org", "acme",
            "--budget-tokens", "100")  # fmt: skip


@pytest.mark.parametrize(
    ("org", "project", "message"),
    [
        ("nope", "web", "unknown organization 'nope'"),
        ("acme", "nope", "unknown project 'nope' in organization 'acme'"),
    ],
)
def test_set_budget_unknown_org_or_project(
    fake: Fake,
    cli: SyncRunner,
    capsys: pytest.CaptureFixture[str],
    org: str,
    project: str,
    message: str,
) -> None:
    fake.auth.add_project(fake.auth.add_org("acme"), "web")
    assert cli(fake.settings, "projects", "set-budget", project, "--org", org,
               "--budget-tokens", "1", "--budget-period", "day") == 1  # fmt: skip
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1
    assert fake.metering.calls == []
