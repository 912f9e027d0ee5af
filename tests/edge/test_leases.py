"""Lease renewal of open requests: about every third of the lease, against metering's own
expiry; NOT_FOUND stops it, UNAVAILABLE is retried; and, against a real metering, a renewed
reservation outlives its lifetime while one left alone expires."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from services.edge import leases as module
from services.edge.leases import MIN_INTERVAL_S, Leases
from services.metering.ledger import Ledger
from services.pb.metering.v1 import metering_pb2, metering_pb2_grpc
from tests.edge.metering_server import serve_metering
from tests.edge.polling import until

NOW = 1_750_000_000.0


class FakeMetering:
    """RenewReservation answers with `answers` in turn (a status code raises it), then keeps
    extending by `lease_s`."""

    def __init__(self, clock: Callable[[], float], lease_s: float) -> None:
        self.clock = clock
        self.lease_s = lease_s
        self.answers: list[grpc.StatusCode] = []
        self.renewed: list[str] = []

    async def RenewReservation(  # noqa: N802 - gRPC method name
        self, req: metering_pb2.RenewReservationRequest, **call: Any
    ) -> metering_pb2.RenewReservationResponse:
        self.renewed.append(req.reservation_id)
        if self.answers:
            code = self.answers.pop(0)
            raise grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "no")
        expires = self.clock() + self.lease_s
        return metering_pb2.RenewReservationResponse(expires_ms=int(expires * 1000))


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(module, "MIN_INTERVAL_S", 0.01)
    monkeypatch.setattr(module, "RETRY_S", 0.01)


@pytest.mark.parametrize(
    ("expires_in_s", "ttl_s", "interval_s"),
    [
        (30.0, 900.0, 10.0),  # a third of what is left by metering's clock
        (900.0, 900.0, 300.0),
        (-5.0, 900.0, 300.0),  # clocks apart: the configured lifetime
        (5000.0, 900.0, 300.0),
        (0.6, 900.0, MIN_INTERVAL_S),  # never busier than this
    ],
)
def test_interval(expires_in_s: float, ttl_s: float, interval_s: float) -> None:
    leases = Leases(None, ttl_s, clock=lambda: NOW)  # type: ignore[arg-type]
    assert leases.interval(int((NOW + expires_in_s) * 1000)) == pytest.approx(interval_s)


async def test_renews_until_cancelled(fast: None) -> None:
    metering = FakeMetering(clock=lambda: NOW, lease_s=0.06)
    leases = Leases(metering, 900.0, clock=lambda: NOW)  # type: ignore[arg-type]
    task = leases.hold("res_1", int((NOW + 0.06) * 1000))
    assert task is not None
    await until(lambda: len(metering.renewed) >= 3)
    task.cancel()
    await asyncio.sleep(0)
    assert task.cancelled() or task.done()
    count = len(metering.renewed)
    await asyncio.sleep(0.1)
    assert len(metering.renewed) == count
    assert set(metering.renewed) == {"res_1"}
    assert len(leases) == 0


async def test_not_found_stops_and_unavailable_is_retried(fast: None) -> None:
    metering = FakeMetering(clock=lambda: NOW, lease_s=0.06)
    metering.answers = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE]
    metering.answers.append(grpc.StatusCode.NOT_FOUND)
    leases = Leases(metering, 900.0, clock=lambda: NOW)  # type: ignore[arg-type]
    task = leases.hold("res_1", int((NOW + 0.06) * 1000))
    assert task is not None
    async with asyncio.timeout(20):
        await task  # ends by itself on NOT_FOUND
    assert metering.renewed == ["res_1"] * 3


def test_nothing_to_renew_without_a_reservation() -> None:
    assert Leases(None, 900.0).hold("", 0) is None  # type: ignore[arg-type]


@pytest.fixture
async def metering(sqlite_url: str) -> AsyncIterator[tuple[Ledger, str]]:
    async with serve_metering(sqlite_url, reservation_ttl_s=0.6) as m:
        yield m.ledger, m.addr


async def test_a_renewed_reservation_outlives_its_lifetime(
    metering: tuple[Ledger, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(module, "MIN_INTERVAL_S", 0.05)
    ledger, addr = metering
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = metering_pb2_grpc.MeteringServiceStub(channel)
        leases = Leases(stub, ledger.reservation_ttl_s)
        admits = [
            await stub.Admit(
                metering_pb2.AdmitRequest(
                    org_id="o", key_id="k", model="m", upper_bound_tokens=10, request_id=f"r{i}"
                ),
                timeout=10,
            )
            for i in range(2)
        ]
        kept, left = admits
        lease = leases.hold(kept.reservation_id, kept.expires_ms)
        # Well past the lifetime of both: only the one left alone expires.
        await asyncio.sleep(3 * ledger.reservation_ttl_s)
        assert await ledger.admissions.expire_stale() == 1
        assert lease is not None and not lease.done()
        await stub.Settle(
            metering_pb2.SettleRequest(
                reservation_id=kept.reservation_id,
                org_id="o",
                key_id="k",
                model="m",
                completion_tokens=3,
                status="ok",
                request_id="r0",
            ),
            timeout=10,
        )
        async with asyncio.timeout(20):
            await lease  # NOT_FOUND after the settle: it stops by itself
    statuses = {r.request_id: r.status for r in await ledger.query_usage()}
    assert statuses == {"r0": "ok", "r1": "expired"}
    assert left.reservation_id != kept.reservation_id


async def test_renewal_ends_at_the_request_deadline(fast: None) -> None:
    metering = FakeMetering(clock=lambda: NOW, lease_s=0.06)
    leases = Leases(metering, 900.0, max_s=0.1, clock=lambda: NOW)  # type: ignore[arg-type]
    task = leases.hold("res_1", int((NOW + 0.06) * 1000))
    assert task is not None
    async with asyncio.timeout(20):
        await task  # an admission nobody settled is left to expire
    assert 1 <= len(metering.renewed) < 20
