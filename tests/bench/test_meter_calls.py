"""`python -m bench.meter_calls` against an in-process metering: both ways answer, and every
pair it sent is in the ledger once."""

from __future__ import annotations

from collections import Counter

from bench import meter_calls
from tests.edge.metering_server import serve_metering


async def test_both_ways_are_measured_and_recorded(sqlite_url: str) -> None:
    async with serve_metering(sqlite_url) as metering:
        result = await meter_calls.measure(metering.addr, pairs=4)
        records = await metering.ledger.query_usage(org_id=meter_calls.ORG, limit=1000)
    assert set(result) == {"unary", "stream"}
    for way in result.values():
        assert way["admit_p50_ms"] > 0 and way["settle_p50_ms"] > 0
    pairs = 2 * (meter_calls.WARMUP + 4)
    assert len(records) == pairs
    assert Counter(r.status for r in records) == {"ok": pairs}
    assert len({r.request_id for r in records}) == pairs
