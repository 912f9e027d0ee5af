"""Settlements from the edge to metering: quick attempts first, then the outbox, delivered in the
background once metering answers (and on the next start when the edge stopped first), never
twice; settlements metering refuses for good are kept aside."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from services.edge import settlements as module
from services.edge.outbox import Outbox, outbox_path
from services.edge.settlements import QUICK_ATTEMPTS, Settlements
from services.pb.metering.v1 import metering_pb2
from tests.edge.polling import until


class FakeMetering:
    """Settle fails with `failing` while it is set; every settle it took is in `taken`."""

    def __init__(self) -> None:
        self.failing: grpc.StatusCode | None = None
        self.attempts = 0
        self.taken: list[str] = []

    async def Settle(  # noqa: N802 - gRPC method name
        self, req: metering_pb2.SettleRequest, **call: Any
    ) -> metering_pb2.SettleResponse:
        self.attempts += 1
        if self.failing is not None:
            raise grpc.aio.AioRpcError(
                self.failing, grpc.aio.Metadata(), grpc.aio.Metadata(), "metering says no"
            )
        self.taken.append(req.request_id)
        return metering_pb2.SettleResponse()


@pytest.fixture(autouse=True)
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(module, "QUICK_BACKOFF_S", (0.0, 0.0))
    monkeypatch.setattr(module, "RETRY_MIN_S", 0.01)
    monkeypatch.setattr(module, "RETRY_MAX_S", 0.02)


def settle(n: int) -> metering_pb2.SettleRequest:
    return metering_pb2.SettleRequest(reservation_id=f"res_{n}", request_id=f"req-{n}")


def opened(metering: FakeMetering, path: Path) -> Settlements:
    s = Settlements(metering)  # type: ignore[arg-type]
    s.open(Outbox(path))
    return s


async def test_a_settlement_metering_takes_is_not_kept(tmp_path: Path) -> None:
    metering = FakeMetering()
    s = opened(metering, outbox_path(tmp_path, 1, "h"))
    await s.settle(settle(1))
    assert metering.taken == ["req-1"]
    assert s.outbox is not None and s.outbox.pending == 0
    await s.close(1.0)


async def test_kept_while_metering_is_down_and_delivered_once_when_back(tmp_path: Path) -> None:
    metering = FakeMetering()
    metering.failing = grpc.StatusCode.UNAVAILABLE
    s = opened(metering, outbox_path(tmp_path, 1, "h"))
    outbox = s.outbox
    assert outbox is not None
    await s.settle(settle(1))
    await s.settle(settle(2))
    # Returned only once kept: durably in the file, before the client saw the end.
    assert outbox.pending == 2
    assert metering.attempts >= 2 * QUICK_ATTEMPTS
    metering.failing = None
    await until(lambda: outbox.pending == 0)
    assert metering.taken == ["req-1", "req-2"]
    await s.close(1.0)
    assert metering.taken == ["req-1", "req-2"]


async def test_kept_settlements_are_delivered_on_the_next_start(tmp_path: Path) -> None:
    path = outbox_path(tmp_path, 1, "h")
    metering = FakeMetering()
    metering.failing = grpc.StatusCode.UNAVAILABLE
    first = opened(metering, path)
    await first.settle(settle(1))
    await first.close(0.05)  # metering still away at shutdown: the row stays in the file
    assert metering.taken == []
    metering.failing = None
    second = opened(metering, path)
    assert second.outbox is not None
    await until(lambda: second.outbox is not None and second.outbox.pending == 0)
    assert metering.taken == ["req-1"]
    await second.close(1.0)


async def test_a_settlement_metering_refuses_for_good_is_kept_aside(tmp_path: Path) -> None:
    metering = FakeMetering()
    metering.failing = grpc.StatusCode.INVALID_ARGUMENT
    s = opened(metering, outbox_path(tmp_path, 1, "h"))
    await s.settle(settle(1))
    assert metering.attempts == 1  # no point asking again
    assert s.outbox is not None and (s.outbox.pending, s.outbox.dead) == (0, 1)
    metering.failing = None
    assert await s.deliver_pending()
    assert metering.taken == []
    await s.close(1.0)


async def test_without_an_outbox_a_failed_settlement_is_reported_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metering = FakeMetering()
    metering.failing = grpc.StatusCode.UNAVAILABLE
    await Settlements(metering).settle(settle(1))  # type: ignore[arg-type]
    assert "its record is lost" in caplog.text


async def test_close_delivers_what_it_can(tmp_path: Path) -> None:
    metering = FakeMetering()
    s = opened(metering, outbox_path(tmp_path, 1, "h"))
    assert s.outbox is not None
    # As if the background task were between two rounds when the edge stops.
    await s.outbox.keep(settle(1))
    await s.close(5.0)
    assert metering.taken == ["req-1"]
    reopened = Outbox(outbox_path(tmp_path, 1, "h"))
    reopened.open()
    assert reopened.pending == 0
    await reopened.close()
