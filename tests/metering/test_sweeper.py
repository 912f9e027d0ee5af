"""The reservation sweeper: it sweeps on its interval, survives a failed sweep, stops cleanly."""

from __future__ import annotations

import asyncio

import pytest

from services.metering.ledger import Ledger
from services.metering.plans import Quota
from services.metering.sweeper import Sweeper, sweep_interval
from tests.metering.conftest import TTL_S, FakeClock


def test_interval_is_a_quarter_ttl_at_most_30s() -> None:
    assert sweep_interval(900) == 30
    assert sweep_interval(60) == 15
    assert sweep_interval(2) == 0.5


async def test_sweeps_repeatedly_and_survives_failures(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0
    third = asyncio.Event()

    async def sweep() -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            third.set()
        if calls == 1:
            raise RuntimeError("database went away")

    sweeper = Sweeper(sweep, 0.001)
    sweeper.start()
    await asyncio.wait_for(third.wait(), 10)
    await sweeper.stop()
    stopped_at = calls
    await asyncio.sleep(0.01)
    assert calls == stopped_at  # nothing runs after stop
    assert "sweeping expired reservations failed" in caplog.text
    await sweeper.stop()  # a second stop is harmless


async def test_stop_waits_for_a_sweep_in_progress() -> None:
    started, finish = asyncio.Event(), asyncio.Event()
    finished = False

    async def sweep() -> None:
        nonlocal finished
        started.set()
        await finish.wait()
        finished = True

    sweeper = Sweeper(sweep, 0.001)
    sweeper.start()
    await asyncio.wait_for(started.wait(), 10)
    stopping = asyncio.create_task(sweeper.stop())
    await asyncio.sleep(0)
    assert not stopping.done()
    finish.set()
    await asyncio.wait_for(stopping, 10)
    assert finished


async def test_the_sweeper_expires_the_ledgers_reservations(
    ledger: Ledger, clock: FakeClock
) -> None:
    quota = Quota(max_concurrent=1)
    await ledger.admit(org_id="o", key_id="k", model="m", upper_bound_tokens=1, key_quota=quota)
    clock.advance(TTL_S)
    swept = asyncio.Event()

    async def sweep() -> None:
        if await ledger.expire_stale():
            swept.set()

    sweeper = Sweeper(sweep, 0.001)
    sweeper.start()
    try:
        await asyncio.wait_for(swept.wait(), 10)
    finally:
        await sweeper.stop()
    await ledger.admit(org_id="o", key_id="k", model="m", upper_bound_tokens=1, key_quota=quota)
