"""`sluice usage` against a running metering service, and when none is running."""

from __future__ import annotations

import json

import pytest

from services.common.settings import Settings
from services.metering.ledger import Ledger
from tests.cli.conftest import Runner


async def record(ledger: Ledger, org_id: str, key_id: str) -> str:
    rid = await ledger.admit(org_id=org_id, key_id=key_id, model="m", upper_bound_tokens=100)
    settled = await ledger.settle(
        reservation_id=rid, org_id=org_id, key_id=key_id, model="smollm2",
        model_digest="sha256:" + "0123456789abcdef" * 4, endpoint="/v1/chat/completions",
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
    assert await sluice(settings, "usage", "--org", "org_b", "--limit", "2", "--json") == 0
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
