"""Admit and Settle on Meter streams, against a real metering server: the same answers and the
same errors as the unary calls, many calls at once each matched to its own answer, streams
replaced by age, a drain that answers what it read and leaves the rest undone for the caller to
send again, and a metering without Meter served by unary calls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
import sqlalchemy as sa

from services.common.grpc_server import chosen_by_service, stop_server
from services.edge import meter as module
from services.edge.control import transport_failure, with_transport_retries
from services.edge.meter import MeterStreams
from services.metering.servicer import MeteringServicer
from services.pb.metering.v1 import metering_pb2, metering_pb2_grpc
from tests.edge.metering_server import Metering, serve_metering


class WithoutMeter(MeteringServicer):
    """A metering of a version before Meter: the generated base answers UNIMPLEMENTED."""

    Meter = metering_pb2_grpc.MeteringServiceServicer.Meter  # type: ignore[assignment]


@pytest.fixture
async def metering(sqlite_url: str) -> AsyncIterator[Metering]:
    async with serve_metering(sqlite_url) as m:
        yield m


def admit(request_id: str, rpm: int = 0) -> metering_pb2.AdmitRequest:
    return metering_pb2.AdmitRequest(
        org_id="o",
        key_id="k",
        model="m",
        upper_bound_tokens=10,
        request_id=request_id,
        key_quota=metering_pb2.Quota(rpm=rpm),
    )


def settle(reservation_id: str, request_id: str, tokens: int) -> metering_pb2.SettleRequest:
    return metering_pb2.SettleRequest(
        reservation_id=reservation_id,
        org_id="o",
        key_id="k",
        model="m",
        prompt_tokens=1,
        completion_tokens=tokens,
        status="ok",
        request_id=request_id,
    )


async def test_admit_and_settle_answer_as_the_unary_calls_do(metering: Metering) -> None:
    streams = MeterStreams(metering.stub)
    try:
        via_stream = await streams.Admit(admit("r-stream"), timeout=10)
        via_unary = await metering.stub.Admit(admit("r-unary"), timeout=10)
        assert via_stream.reservation_id and via_stream.reservation_id != via_unary.reservation_id
        assert via_stream.reserved_tokens == via_unary.reserved_tokens == 10
        assert via_stream.expires_ms > 0
        settled = await streams.Settle(settle(via_stream.reservation_id, "r-stream", 4), timeout=10)
        assert settled.record.request_id == "r-stream"
        assert settled.record.completion_tokens == 4
        # Settling twice returns the first record, as the unary call does.
        again = await streams.Settle(settle(via_stream.reservation_id, "r-stream", 9), timeout=10)
        assert again.record.id == settled.record.id and again.record.completion_tokens == 4
    finally:
        await streams.close()
    assert [r.request_id for r in await metering.ledger.query_usage()] == ["r-stream"]


async def test_a_refusal_is_the_unary_calls_error(metering: Metering) -> None:
    streams = MeterStreams(metering.stub)
    try:
        await metering.stub.Admit(admit("first", rpm=1), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as unary:
            await metering.stub.Admit(admit("second", rpm=1), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as streamed:
            await streams.Admit(admit("third", rpm=1), timeout=10)
    finally:
        await streams.close()
    assert streamed.value.code() == unary.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert streamed.value.details() == unary.value.details()
    trailers = dict(streamed.value.trailing_metadata())
    assert trailers["sluice-error-code"] == "rate_limit_exceeded"
    assert int(trailers["sluice-retry-after"]) >= 1
    assert trailers["x-ratelimit-limit-requests"] == "1"
    assert chosen_by_service(streamed.value) and not transport_failure(streamed.value)
    unary_keys = {k for k, _ in unary.value.trailing_metadata()}
    assert set(trailers) == unary_keys


async def test_many_calls_at_once_each_get_their_own_answer(
    metering: Metering, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every call on a new stream: replaced streams still answer the calls sent on them.
    monkeypatch.setattr(module, "MAX_AGE_S", 0.0)
    streams = MeterStreams(metering.stub, lanes=3)

    async def one(i: int) -> tuple[str, metering_pb2.UsageRecord]:
        admitted = await streams.Admit(admit(f"r{i}"), timeout=20)
        done = await streams.Settle(settle(admitted.reservation_id, f"r{i}", i), timeout=20)
        return admitted.reservation_id, done.record

    try:
        results = await asyncio.gather(*(one(i) for i in range(60)))
    finally:
        await streams.close()
    assert len({reservation for reservation, _ in results}) == 60
    for i, (_, record) in enumerate(results):
        assert (record.request_id, record.completion_tokens) == (f"r{i}", i)
    records = await metering.ledger.query_usage(limit=100)
    assert sorted(r.request_id for r in records) == sorted(f"r{i}" for i in range(60))


async def test_a_drain_answers_what_was_read_and_nothing_else(metering: Metering) -> None:
    streams = MeterStreams(metering.stub, lanes=1)
    try:
        await streams.Admit(admit("warm"), timeout=10)  # the stream is open
        calls = [asyncio.create_task(streams.Admit(admit(f"r{i}"), timeout=10)) for i in range(40)]
        # Drained with some answered, the rest read and running or not read yet.
        await asyncio.wait(calls, return_when=asyncio.FIRST_COMPLETED)
        # The stream ends itself once what was read is answered: the stop does not wait out
        # the grace period (the bound here is far below it).
        async with asyncio.timeout(30):
            await stop_server(metering.running, grace_s=120, on_drain=metering.servicer.drain)
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        # A call left unread failed as a transport failure, which the callers send again.
        with pytest.raises(grpc.aio.AioRpcError) as after:
            await streams.Admit(admit("after"), timeout=10)
        assert transport_failure(after.value)
    finally:
        await streams.close()
    failed = {f"r{i}" for i, o in enumerate(outcomes) if isinstance(o, BaseException)}
    assert all(transport_failure(o) for o in outcomes if isinstance(o, BaseException))
    assert len(failed) < 40
    # Every answered admission is held and no unanswered one is: sending those again admits
    # each request once.
    async with metering.engine.connect() as conn:
        rows = await conn.execute(sa.text("SELECT request_id FROM reservations"))
        held = {r[0] for r in rows}
    assert held == {"warm"} | ({f"r{i}" for i in range(40)} - failed)


async def test_a_metering_without_meter_is_served_by_unary_calls(sqlite_url: str) -> None:
    async with serve_metering(sqlite_url, WithoutMeter) as old:
        streams = MeterStreams(old.stub)
        try:
            admitted = await with_transport_retries(streams.Admit, admit("r"), timeout_s=10)
            assert streams.unary
            done = await streams.Settle(settle(admitted.reservation_id, "r", 3), timeout=10)
        finally:
            await streams.close()
        assert done.record.completion_tokens == 3
