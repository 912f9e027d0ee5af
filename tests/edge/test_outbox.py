"""The edge's outbox file: kept settlements survive closing and reopening (a restart), dead ones
are not handed out again, one process holds a file, and orphaned outboxes are taken over."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.edge.outbox import Outbox, OutboxInUse, outbox_path
from services.pb.metering.v1 import metering_pb2


def settle(n: int) -> metering_pb2.SettleRequest:
    return metering_pb2.SettleRequest(
        reservation_id=f"res_{n}", request_id=f"req-{n}", completion_tokens=n, status="ok"
    )


def test_the_path_names_host_and_port(tmp_path: Path) -> None:
    path = outbox_path(tmp_path, 8000, "edge-7f/x")
    assert path == tmp_path / "outbox" / "edge-edge-7f_x-8000.sqlite3"


async def test_kept_settlements_survive_a_restart_until_delivered(tmp_path: Path) -> None:
    path = outbox_path(tmp_path, 8000, "h")
    box = Outbox(path)
    box.open()
    await box.keep(settle(1), "UNAVAILABLE: down")
    await box.keep(settle(2))
    assert (box.pending, box.dead) == (2, 0)
    await box.close()

    again = Outbox(path)
    again.open()
    assert again.pending == 2
    rows = await again.due(10)
    assert [r.request for r in rows] == [settle(1), settle(2)]
    await again.failed(rows[0].id, "UNAVAILABLE: still down", dead=False)
    await again.delivered(rows[1].id)
    (left,) = await again.due(10)
    assert (left.request, left.attempts, again.pending) == (settle(1), 1, 1)
    await again.delivered(left.id)
    assert await again.due(10) == [] and again.pending == 0
    await again.close()


async def test_dead_settlements_stay_but_are_not_handed_out(tmp_path: Path) -> None:
    box = Outbox(outbox_path(tmp_path, 8000, "h"))
    box.open()
    await box.keep(settle(1), "INVALID_ARGUMENT: bad", dead=True)
    await box.keep(settle(2))
    (row,) = await box.due(10)
    await box.failed(row.id, "INVALID_ARGUMENT: bad", dead=True)
    assert await box.due(10) == []
    assert (box.pending, box.dead) == (0, 2)
    await box.close()


async def test_one_process_holds_an_outbox(tmp_path: Path) -> None:
    path = outbox_path(tmp_path, 8000, "h")
    box = Outbox(path)
    box.open()
    with pytest.raises(OutboxInUse):
        Outbox(path).open()
    await box.close()


async def test_orphaned_outboxes_are_taken_over_and_live_ones_left_alone(tmp_path: Path) -> None:
    live = Outbox(outbox_path(tmp_path, 8001, "alive"))
    live.open()
    await live.keep(settle(3))
    orphan = Outbox(outbox_path(tmp_path, 8000, "gone"))
    orphan.open()
    await orphan.keep(settle(1))
    await orphan.keep(settle(2), "INVALID_ARGUMENT: bad", dead=True)
    await orphan.close()

    box = Outbox(outbox_path(tmp_path, 8000, "new"))
    box.open()
    assert (box.pending, box.dead) == (1, 1)
    assert [r.request for r in await box.due(10)] == [settle(1)]
    assert not orphan.path.exists()
    assert live.path.exists() and live.pending == 1
    await box.close()
    await live.close()
