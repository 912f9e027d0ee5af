"""`Ledger` on SQLite and PostgreSQL: admit, settle (durable, idempotent) and query."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.db import create_engine
from services.common.errors import InvalidArgument
from services.metering.ledger import Ledger


def usage(reservation_id: str, **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "reservation_id": reservation_id,
        "org_id": "org1",
        "key_id": "key_1",
        "model": "smollm2-135m-instruct",
        "model_digest": "sha256:" + "ab" * 32,
        "endpoint": "/v1/chat/completions",
        "prompt_tokens": 12,
        "completion_tokens": 30,
        "status": "ok",
        "latency_ms": 250.5,
        "ttft_ms": 20.25,
        "request_id": "req_1",
    }
    fields.update(overrides)
    return fields


async def admit(ledger: Ledger, org_id: str = "org1", key_id: str = "key_1") -> str:
    return await ledger.admit(
        org_id=org_id,
        key_id=key_id,
        model="smollm2-135m-instruct",
        upper_bound_tokens=512,
        endpoint="/v1/chat/completions",
        request_id="req_1",
    )


async def test_admit_writes_an_open_reservation(ledger: Ledger, engine: AsyncEngine) -> None:
    rid = await admit(ledger)
    assert rid.startswith("res_")
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT upper_bound_tokens, settled_at FROM reservations WHERE id = :id"),
                {"id": rid},
            )
        ).one()
    assert row == (512, None)


async def test_settle_records_usage_and_closes_the_reservation(
    ledger: Ledger, engine: AsyncEngine
) -> None:
    rid = await admit(ledger)
    record = await ledger.settle(**usage(rid))
    assert record.id.startswith("usage_")
    assert record.reservation_id == rid
    assert (record.prompt_tokens, record.completion_tokens, record.total_tokens) == (12, 30, 42)
    assert record.status == "ok" and record.latency_ms == 250.5 and record.ttft_ms == 20.25
    assert record.model_digest == "sha256:" + "ab" * 32
    assert record.created_at.tzinfo is not None
    assert int(record.created_at.timestamp() * 1000) == record.created_ms
    async with engine.connect() as conn:
        settled = await conn.scalar(
            text("SELECT settled_at FROM reservations WHERE id = :id"), {"id": rid}
        )
    assert settled is not None


async def test_settle_is_durable_across_engines(ledger: Ledger, db_url: str) -> None:
    rid = await admit(ledger)
    record = await ledger.settle(**usage(rid))
    other = create_engine(db_url)
    try:
        seen = await Ledger(other).query_usage()
    finally:
        await other.dispose()
    assert [r.id for r in seen] == [record.id]


async def test_settle_twice_returns_the_first_record(ledger: Ledger) -> None:
    rid = await admit(ledger)
    first = await ledger.settle(**usage(rid))
    second = await ledger.settle(**usage(rid, completion_tokens=999, status="error"))
    assert second == first
    assert len(await ledger.query_usage()) == 1


async def test_concurrent_settles_write_one_record(ledger: Ledger) -> None:
    rid = await admit(ledger)
    records = await asyncio.gather(*(ledger.settle(**usage(rid)) for _ in range(6)))
    assert len({r.id for r in records}) == 1
    assert len(await ledger.query_usage()) == 1


async def test_settle_bills_the_admitted_principal(ledger: Ledger) -> None:
    rid = await admit(ledger, org_id="org_real", key_id="key_real")
    record = await ledger.settle(**usage(rid, org_id="org_other", key_id="key_other"))
    assert (record.org_id, record.key_id) == ("org_real", "key_real")


async def test_unknown_reservation_still_records_usage(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    record = await ledger.settle(**usage("res_unknown"))
    assert record.reservation_id == "res_unknown"
    assert "res_unknown" in caplog.text
    assert [r.id for r in await ledger.query_usage()] == [record.id]


async def test_usage_without_reservation_is_recorded_each_time(ledger: Ledger) -> None:
    a = await ledger.settle(**usage("", status="rejected", completion_tokens=0))
    b = await ledger.settle(**usage("", status="rejected", completion_tokens=0))
    assert a.id != b.id and a.reservation_id is None
    assert len(await ledger.query_usage()) == 2


async def test_query_filters_newest_first_and_limits(ledger: Ledger) -> None:
    ids = []
    for org, key in [("o1", "k1"), ("o1", "k2"), ("o2", "k3"), ("o1", "k1")]:
        rid = await admit(ledger, org_id=org, key_id=key)
        ids.append((await ledger.settle(**usage(rid))).id)
        await asyncio.sleep(0.002)  # distinct created_ms, so the order is by time
    assert [r.id for r in await ledger.query_usage()] == ids[::-1]
    assert [r.id for r in await ledger.query_usage(org_id="o1")] == [ids[3], ids[1], ids[0]]
    assert [r.id for r in await ledger.query_usage(org_id="o1", key_id="k1")] == [ids[3], ids[0]]
    assert [r.id for r in await ledger.query_usage(limit=2)] == [ids[3], ids[2]]
    assert await ledger.query_usage(org_id="nobody") == []


@pytest.mark.parametrize(
    "overrides",
    [{"status": "weird"}, {"prompt_tokens": -1}, {"completion_tokens": -5}, {"latency_ms": -1.0}],
)
async def test_settle_rejects_invalid_usage(ledger: Ledger, overrides: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument):
        await ledger.settle(**usage("res_x", **overrides))


@pytest.mark.parametrize(
    "overrides",
    [{"org_id": ""}, {"key_id": ""}, {"model": ""}, {"upper_bound_tokens": -1}],
)
async def test_admit_rejects_invalid_requests(ledger: Ledger, overrides: dict[str, Any]) -> None:
    fields: dict[str, Any] = {
        "org_id": "o", "key_id": "k", "model": "m", "upper_bound_tokens": 10,
    }  # fmt: skip
    fields.update(overrides)
    with pytest.raises(InvalidArgument):
        await ledger.admit(**fields)


async def test_query_rejects_negative_limit(ledger: Ledger) -> None:
    with pytest.raises(InvalidArgument):
        await ledger.query_usage(limit=-1)
