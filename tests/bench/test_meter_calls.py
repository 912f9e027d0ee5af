"""`python -m bench.meter_calls` against an in-process metering: both ways answer, and every
pair it sent is in the ledger once."""

from __future__ import annotations

from collections import Counter

from bench import meter_calls
from services.common.db import create_engine, migrate
from services.common.grpc_server import start_server
from services.metering.ledger import Ledger
from services.metering.main import MIGRATIONS, VERSION_TABLE
from services.metering.servicer import SERVICE_NAME, add_to_server


async def test_both_ways_are_measured_and_recorded(sqlite_url: str) -> None:
    engine = create_engine(sqlite_url)
    await migrate(engine, MIGRATIONS, VERSION_TABLE)
    ledger = Ledger(engine)
    running = await start_server("127.0.0.1:0", lambda s: add_to_server(s, ledger), [SERVICE_NAME])
    try:
        result = await meter_calls.measure(f"127.0.0.1:{running.port}", pairs=4)
        records = await ledger.query_usage(org_id=meter_calls.ORG, limit=1000)
    finally:
        await running.server.stop(0)
        await engine.dispose()
    assert set(result) == {"unary", "stream"}
    for way in result.values():
        assert way["admit_p50_ms"] > 0 and way["settle_p50_ms"] > 0
    pairs = 2 * (meter_calls.WARMUP + 4)
    assert len(records) == pairs
    assert Counter(r.status for r in records) == {"ok": pairs}
    assert len({r.request_id for r in records}) == pairs
