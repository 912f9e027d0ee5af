"""`Ledger` on SQLite and PostgreSQL: admit, settle (durable, idempotent), queries and summaries."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.db import create_engine
from services.common.errors import InvalidArgument
from services.metering.ledger import Ledger
from tests.metering.conftest import FakeClock


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
    admitted = await ledger.admit(
        org_id=org_id,
        key_id=key_id,
        model="smollm2-135m-instruct",
        upper_bound_tokens=512,
        endpoint="/v1/chat/completions",
        request_id="req_1",
    )
    return admitted.reservation_id


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


async def test_usage_without_reservation_is_recorded_once_per_request_id(ledger: Ledger) -> None:
    a = await ledger.settle(**usage("", status="rejected", completion_tokens=0))
    again = await ledger.settle(**usage("", status="rejected", completion_tokens=0))
    other = await ledger.settle(**usage("", status="rejected", request_id="req_2"))
    elsewhere = await ledger.settle(**usage("", status="rejected", org_id="org2"))
    assert again == a and a.reservation_id is None
    assert len({a.id, other.id, elsewhere.id}) == 3
    assert len(await ledger.query_usage()) == 3


async def test_usage_without_reservation_or_request_id_is_recorded_each_time(
    ledger: Ledger,
) -> None:
    a = await ledger.settle(**usage("", status="rejected", request_id=""))
    b = await ledger.settle(**usage("", status="rejected", request_id=""))
    assert a.id != b.id
    assert len(await ledger.query_usage()) == 2


async def test_query_filters_newest_first_and_limits(ledger: Ledger, clock: FakeClock) -> None:
    ids = []
    for org, key in [("o1", "k1"), ("o1", "k2"), ("o2", "k3"), ("o1", "k1")]:
        rid = await admit(ledger, org_id=org, key_id=key)
        ids.append((await ledger.settle(**usage(rid))).id)
        clock.advance(0.002)  # distinct created_ms, so the order is by time
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


DAY_MS = 86_400_000


async def record_at(
    ledger: Ledger, clock: FakeClock, at_ms: int, prompt: int, completion: int, **who: str
) -> str:
    clock.now = at_ms / 1000
    admitted = await ledger.admit(
        org_id=who.get("org_id", "o1"),
        project_id=who.get("project_id", "p1"),
        key_id=who.get("key_id", "k1"),
        model=who.get("model", "m1"),
        upper_bound_tokens=100,
    )
    fields = usage(
        admitted.reservation_id,
        model=who.get("model", "m1"),
        prompt_tokens=prompt,
        completion_tokens=completion,
    )
    return (await ledger.settle(**fields)).id


async def test_query_filters_by_project_model_and_time_range(
    ledger: Ledger, clock: FakeClock
) -> None:
    t = 1_741_910_400_000  # 2025-03-14 00:00 UTC
    a = await record_at(ledger, clock, t + 1000, 1, 1, project_id="p1", model="m1")
    b = await record_at(ledger, clock, t + 2000, 1, 1, project_id="p2", model="m1")
    c = await record_at(ledger, clock, t + 3000, 1, 1, project_id="p1", model="m2")
    ids = lambda records: [r.id for r in records]  # noqa: E731
    assert ids(await ledger.query_usage(project_id="p1")) == [c, a]
    assert ids(await ledger.query_usage(model="m1")) == [b, a]
    assert ids(await ledger.query_usage(project_id="p1", model="m2")) == [c]
    assert ids(await ledger.query_usage(start_ms=t + 2000)) == [c, b]
    assert ids(await ledger.query_usage(end_ms=t + 2000)) == [a]  # end is exclusive
    assert ids(await ledger.query_usage(start_ms=t + 1000, end_ms=t + 3000)) == [b, a]
    with pytest.raises(InvalidArgument):
        await ledger.query_usage(start_ms=-1)


async def test_records_keep_project_ip_and_provider(ledger: Ledger) -> None:
    admitted = await ledger.admit(
        org_id="o", project_id="p", key_id="k", model="m", upper_bound_tokens=1,
        client_ip="2001:db8::1", provider="anthropic",
    )  # fmt: skip
    record = await ledger.settle(**usage(admitted.reservation_id, org_id="o", key_id="k"))
    assert (record.project_id, record.client_ip, record.provider) == (
        "p",
        "2001:db8::1",
        "anthropic",
    )
    (read,) = await ledger.query_usage()
    assert read == record


async def test_summaries_by_day_key_model_and_project(ledger: Ledger, clock: FakeClock) -> None:
    t = 1_741_910_400_000  # 2025-03-14 00:00 UTC
    await record_at(ledger, clock, t + 5, 10, 1, key_id="k1", model="m1", project_id="p1")
    await record_at(ledger, clock, t + DAY_MS - 1, 20, 2, key_id="k2", model="m1", project_id="p1")
    await record_at(ledger, clock, t + DAY_MS, 30, 3, key_id="k1", model="m2", project_id="p2")
    await record_at(ledger, clock, t + 3 * DAY_MS, 40, 4, key_id="k1", model="m1", project_id="p2")

    def rows(totals: list[Any]) -> list[tuple[Any, ...]]:
        return [
            (t.group, t.requests, t.prompt_tokens, t.completion_tokens, t.total_tokens)
            for t in totals
        ]

    assert rows(await ledger.summarize_usage("day")) == [
        ("2025-03-14", 2, 30, 3, 33),
        ("2025-03-15", 1, 30, 3, 33),
        ("2025-03-17", 1, 40, 4, 44),
    ]
    assert rows(await ledger.summarize_usage("key")) == [("k1", 3, 80, 8, 88), ("k2", 1, 20, 2, 22)]
    assert rows(await ledger.summarize_usage("model")) == [
        ("m1", 3, 70, 7, 77),
        ("m2", 1, 30, 3, 33),
    ]
    assert rows(await ledger.summarize_usage("project", model="m1")) == [
        ("p1", 2, 30, 3, 33),
        ("p2", 1, 40, 4, 44),
    ]
    assert rows(
        await ledger.summarize_usage("day", start_ms=t + DAY_MS, end_ms=t + 2 * DAY_MS)
    ) == [("2025-03-15", 1, 30, 3, 33)]
    assert await ledger.summarize_usage("key", org_id="nobody") == []
    with pytest.raises(InvalidArgument):
        await ledger.summarize_usage("week")
