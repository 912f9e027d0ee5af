"""Revision 0002 on a database that already holds 0001's rows: old records and reservations
keep working."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import bindparam, text

from services.common.db import create_engine, migrate
from services.common.sqltypes import UTCDateTime
from services.metering.ledger import Ledger
from services.metering.main import MIGRATIONS, VERSION_TABLE
from services.metering.plans import Quota
from tests.metering.conftest import START, FakeClock

OLD_AT = datetime(2025, 3, 14, 11, tzinfo=UTC)


async def test_upgrade_keeps_old_rows_working(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        await migrate(engine, MIGRATIONS, VERSION_TABLE, "0001")
        async with engine.begin() as conn:
            for rid, settled in (("res_open", None), ("res_done", OLD_AT)):
                await conn.execute(
                    text(
                        "INSERT INTO reservations (id, org_id, key_id, model, endpoint, "
                        "request_id, upper_bound_tokens, created_at, settled_at) VALUES "
                        "(:id, 'o', 'k', 'm', '/v1/completions', 'r', 10, :at, :settled)"
                    ).bindparams(
                        bindparam("at", type_=UTCDateTime()),
                        bindparam("settled", type_=UTCDateTime()),
                    ),
                    {"id": rid, "at": OLD_AT, "settled": settled},
                )
            await conn.execute(
                text(
                    "INSERT INTO usage_records (id, created_at, created_ms, request_id, "
                    "reservation_id, org_id, key_id, model, model_digest, endpoint, "
                    "prompt_tokens, completion_tokens, status, latency_ms, ttft_ms) VALUES "
                    "('usage_old', :at, 1741950000000, 'r', 'res_done', 'o', 'k', 'm', "
                    "'', '/v1/completions', 1, 2, 'ok', 3.0, 0.5)"
                ).bindparams(bindparam("at", type_=UTCDateTime())),
                {"at": OLD_AT},
            )

        await migrate(engine, MIGRATIONS, VERSION_TABLE)
        ledger = Ledger(engine, clock=FakeClock(START))
        (old,) = await ledger.query_usage()
        assert (old.id, old.project_id, old.client_ip, old.provider) == ("usage_old", "", "", "")
        assert [t.total_tokens for t in await ledger.summarize_usage("project")] == [3]

        # The open reservation from before the upgrade expired with its creation; it held no
        # budget, and a late settle still records its usage.
        assert await ledger.recover() == 0
        assert await ledger.expire_stale() == 1
        record = await ledger.settle(
            reservation_id="res_open", org_id="o", key_id="k", model="m",
            prompt_tokens=4, completion_tokens=5, status="ok",
        )  # fmt: skip
        assert (record.org_id, record.total_tokens) == ("o", 9)
        admitted = await ledger.admit(
            org_id="o", key_id="k", model="m", upper_bound_tokens=5,
            key_quota=Quota(budget_tokens=100),
        )  # fmt: skip
        assert admitted.reserved_tokens == 5
    finally:
        await engine.dispose()
