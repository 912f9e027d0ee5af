"""`sluice usage`: filters, grouping and formats against fake services, against a running
metering service, and when none is running."""

from __future__ import annotations

import csv
import io
import json
import time
from typing import Any

import pytest

from services.cli.usage import RECORD_FIELDS
from services.common.settings import Settings
from services.metering.ledger import Ledger
from services.pb.metering.v1 import metering_pb2
from tests.cli.conftest import Fake, Runner, SyncRunner

DIGEST = "sha256:" + "0123456789abcdef" * 4

# --- against fake services -------------------------------------------------------------------


def _record(n: int, org_id: str = "org_x", **fields: Any) -> metering_pb2.UsageRecord:
    return metering_pb2.UsageRecord(
        id=f"use_{n}", created=1_714_564_800, created_ms=1_714_564_800_123, org_id=org_id,
        key_id="key_1", model="smollm2", model_digest=DIGEST, endpoint="/v1/chat/completions",
        prompt_tokens=3, completion_tokens=4, status="ok", latency_ms=12.34, **fields,
    )  # fmt: skip


def test_filters_resolve_names_to_ids(fake: Fake, cli: SyncRunner) -> None:
    acme = fake.auth.add_org("acme")
    web = fake.auth.add_project(acme, "web")
    assert cli(fake.settings, "usage", "--org", "acme", "--project", "web", "--key", "key_1",
               "--model", "m", "--since", "2024-05-01", "--until", "2024-06-01T00:00Z",
               "--limit", "5") == 0  # fmt: skip
    expected = metering_pb2.UsageFilter(
        org_id=acme.id, project_id=web.id, key_id="key_1", model="m",
        start_ms=1_714_521_600_000, end_ms=1_717_200_000_000,
    )  # fmt: skip
    assert fake.metering.sent("QueryUsage") == [
        metering_pb2.QueryUsageRequest(org_id=acme.id, key_id="key_1", limit=5, filter=expected)
    ]


def test_since_a_duration_means_before_now(fake: Fake, cli: SyncRunner) -> None:
    before = time.time()
    assert cli(fake.settings, "usage", "--since", "7d") == 0
    after = time.time()
    (sent,) = fake.metering.sent("QueryUsage")
    assert (before - 7 * 86400) * 1000 - 1 <= sent.filter.start_ms <= (after - 7 * 86400) * 1000
    assert sent.filter.end_ms == 0 and fake.auth.calls == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--org", "nope"), "unknown organization 'nope'"),
        (("--project", "nope"), "unknown project 'nope'"),
        (("--since", "2024-05-02", "--until", "2024-05-01"), "--since must be before --until"),
        (("--group-by", "day", "--limit", "3"), "--limit applies to records"),
    ],
)
def test_bad_filters_fail_with_one_line(
    fake: Fake,
    cli: SyncRunner,
    capsys: pytest.CaptureFixture[str],
    argv: tuple[str, ...],
    message: str,
) -> None:
    fake.auth.add_org("acme")
    assert cli(fake.settings, "usage", *argv) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"error: {message}") and err.count("\n") == 1
    assert fake.metering.calls == []


def test_ambiguous_project_name_asks_for_the_org(
    fake: Fake, cli: SyncRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.auth.add_project(fake.auth.add_org("acme"), "web")
    fake.auth.add_project(fake.auth.add_org("beta"), "web")
    assert cli(fake.settings, "usage", "--project", "web") == 1
    assert "several organizations (acme, beta); add --org" in capsys.readouterr().err


def test_malformed_since_is_a_usage_error(
    fake: Fake, cli: SyncRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        cli(fake.settings, "usage", "--since", "last week")
    assert "invalid time 'last week'" in capsys.readouterr().err


def test_json_is_a_list_of_records(
    fake: Fake, cli: SyncRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.metering.records = [_record(1, project_id="proj_1", provider="sluice"), _record(2)]
    assert cli(fake.settings, "usage", "--format", "json") == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in records] == ["use_1", "use_2"]
    assert list(records[0]) == list(RECORD_FIELDS)
    assert records[0]["time"] == "2024-05-01T12:00:00.123Z"
    assert records[0]["total_tokens"] == 7 and records[0]["project_id"] == "proj_1"


def test_csv_has_a_header_and_one_row_per_record(
    fake: Fake, cli: SyncRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.metering.records = [_record(1), _record(2, client_ip="10.0.0.1")]
    assert cli(fake.settings, "usage", "--format", "csv") == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == ",".join(RECORD_FIELDS)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["id"], r["total_tokens"], r["client_ip"]) for r in rows] == [
        ("use_1", "7", ""),
        ("use_2", "7", "10.0.0.1"),
    ]


def test_json_and_format_are_exclusive(fake: Fake, cli: SyncRunner) -> None:
    with pytest.raises(SystemExit):
        cli(fake.settings, "usage", "--json", "--format", "csv")


def test_group_by_sends_summarize_and_prints_totals(
    fake: Fake, cli: SyncRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    acme = fake.auth.add_org("acme")
    fake.metering.totals = [
        metering_pb2.UsageTotal(group="smollm2", requests=2, prompt_tokens=6,
                                completion_tokens=8, total_tokens=14),
        metering_pb2.UsageTotal(group="openai/gpt-4o", requests=1, prompt_tokens=1,
                                completion_tokens=1, total_tokens=2),
    ]  # fmt: skip
    assert cli(fake.settings, "usage", "--org", "acme", "--group-by", "model") == 0
    assert fake.metering.sent("SummarizeUsage") == [
        metering_pb2.SummarizeUsageRequest(
            filter=metering_pb2.UsageFilter(org_id=acme.id), group_by="model"
        )
    ]
    assert fake.metering.sent("QueryUsage") == []
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split() == [
        "model", "requests", "prompt_tokens", "completion_tokens", "total_tokens",
    ]  # fmt: skip
    assert [r.split() for r in rows] == [
        ["smollm2", "2", "6", "8", "14"],
        ["openai/gpt-4o", "1", "1", "1", "2"],
    ]

    assert cli(fake.settings, "usage", "--group-by", "model", "--format", "csv") == 0
    assert capsys.readouterr().out.splitlines() == [
        "model,requests,prompt_tokens,completion_tokens,total_tokens",
        "smollm2,2,6,8,14",
        "openai/gpt-4o,1,1,1,2",
    ]
    assert cli(fake.settings, "usage", "--group-by", "model", "--format", "json") == 0
    assert json.loads(capsys.readouterr().out)[1] == {
        "model": "openai/gpt-4o", "requests": 1, "prompt_tokens": 1, "completion_tokens": 1,
        "total_tokens": 2,
    }  # fmt: skip


# --- against the running metering service ----------------------------------------------------


async def record(ledger: Ledger, org_id: str, key_id: str) -> str:
    admitted = await ledger.admit(org_id=org_id, key_id=key_id, model="m", upper_bound_tokens=100)
    settled = await ledger.settle(
        reservation_id=admitted.reservation_id, org_id=org_id, key_id=key_id, model="smollm2",
        model_digest=DIGEST, endpoint="/v1/chat/completions",
        prompt_tokens=3, completion_tokens=4, status="ok", latency_ms=12.34,
    )  # fmt: skip
    return settled.id


async def test_table(
    stack: tuple[Settings, Ledger], sluice: Runner, capsys: pytest.CaptureFixture[str]
) -> None:
    settings, ledger = stack
    await record(ledger, "org_a", "key_a")
    assert await sluice(settings, "usage") == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split("  ")[0] == "time" and "completion_tokens" in header
    cells = row.split()
    assert cells[1:] == [
        "org_a", "key_a", "smollm2", "0123456789ab", "/v1/chat/completions",
        "3", "4", "7", "ok", "12.3",
    ]  # fmt: skip


async def test_json_filters_and_limit(
    stack: tuple[Settings, Ledger], sluice: Runner, capsys: pytest.CaptureFixture[str]
) -> None:
    settings, ledger = stack
    await record(ledger, "org_a", "key_a")
    b_ids = {await record(ledger, "org_b", "key_b") for _ in range(3)}
    # --org now takes a name or id known to auth (see the fake tests); --key is passed as is.
    assert await sluice(settings, "usage", "--key", "key_b", "--limit", "2", "--json") == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2 and {r["org_id"] for r in lines} == {"org_b"}
    assert lines[0]["total_tokens"] == 7 and lines[0]["time"].endswith("Z")
    assert {r["id"] for r in lines} <= b_ids

    assert await sluice(settings, "usage", "--key", "key_a", "--json") == 0
    assert [json.loads(x)["key_id"] for x in capsys.readouterr().out.splitlines()] == ["key_a"]


async def test_unreachable_metering_service(
    dead_addr: str, sluice: Runner, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await sluice(Settings(metering_addr=dead_addr), "usage") == 1
    assert "metering service not reachable at 127.0.0.1:1" in capsys.readouterr().err
