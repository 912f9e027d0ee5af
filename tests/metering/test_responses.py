"""The stored responses of the Responses API: one organization's are never another's, they are
gone after the retention period (on a fake clock), the sweeper deletes their rows, and the gRPC
service maps every outcome to its status. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace

import grpc
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.errors import AlreadyExists, InvalidArgument, NotFound
from services.common.grpc_server import start_server, stop_server
from services.metering import responses_servicer
from services.metering.models import stored_responses
from services.metering.responses import MAX_STORED_BYTES, ResponseStore, StoredResponse
from services.metering.sweeper import Sweeper
from services.pb.metering.v1 import metering_pb2, metering_pb2_grpc
from tests.metering.conftest import START, FakeClock

RETENTION_S = 3600.0


def response(org_id: str = "org_a", response_id: str = "resp_sluice_1") -> StoredResponse:
    return StoredResponse(
        org_id=org_id,
        response_id=response_id,
        project_id="proj_1",
        key_id="key_1",
        model="anthropic/claude-3-5-haiku-latest",
        response_json=json.dumps({"id": response_id, "object": "response", "output": []}),
        input_items_json=json.dumps([{"type": "message", "role": "user", "content": "Hi"}]),
        conversation_json=json.dumps([{"type": "message", "role": "user", "content": "Hi"}]),
    )


@pytest.fixture
def store(engine: AsyncEngine, clock: FakeClock) -> ResponseStore:
    return ResponseStore(engine, retention_s=RETENTION_S, clock=clock)


async def rows(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        count = select(func.count()).select_from(stored_responses)
        return int((await conn.execute(count)).scalar_one())


async def test_put_then_get_with_and_without_items(store: ResponseStore) -> None:
    stored = await store.put(response())
    assert stored.created_ms == int(START * 1000)
    assert stored.expires_ms == stored.created_ms + int(RETENTION_S * 1000)
    full = await store.get("org_a", "resp_sluice_1", include_items=True)
    assert full == stored
    brief = await store.get("org_a", "resp_sluice_1")
    assert brief.response_json == stored.response_json
    assert (brief.input_items_json, brief.conversation_json) == ("", "")


async def test_another_organization_never_finds_it(store: ResponseStore) -> None:
    await store.put(response())
    with pytest.raises(NotFound):
        await store.get("org_b", "resp_sluice_1")
    with pytest.raises(NotFound):
        await store.delete("org_b", "resp_sluice_1")
    # The same id in another organization is another response.
    await store.put(response(org_id="org_b"))
    await store.delete("org_b", "resp_sluice_1")
    assert (await store.get("org_a", "resp_sluice_1")).org_id == "org_a"


async def test_gone_after_the_retention_period_then_swept(
    store: ResponseStore, engine: AsyncEngine, clock: FakeClock
) -> None:
    await store.put(response())
    await store.put(response(response_id="resp_sluice_2"))
    clock.advance(RETENTION_S - 1)
    await store.get("org_a", "resp_sluice_1")
    assert await store.expire() == 0
    clock.advance(1)
    for rid in ("resp_sluice_1", "resp_sluice_2"):
        with pytest.raises(NotFound):
            await store.get("org_a", rid)
    with pytest.raises(NotFound):
        await store.delete("org_a", "resp_sluice_1")
    assert await rows(engine) == 2  # unreadable at once; the rows go with the next sweep
    assert await store.expire() == 2
    assert await rows(engine) == 0


async def test_the_sweeper_deletes_expired_responses(
    store: ResponseStore, engine: AsyncEngine, clock: FakeClock
) -> None:
    await store.put(response())
    clock.advance(RETENTION_S)
    swept = asyncio.Event()

    async def sweep() -> None:
        if await store.expire():
            swept.set()

    sweeper = Sweeper(sweep, 0.001, "responses")
    sweeper.start()
    try:
        await asyncio.wait_for(swept.wait(), 10)
    finally:
        await sweeper.stop()
    assert await rows(engine) == 0


async def test_delete_then_get_is_not_found(store: ResponseStore) -> None:
    await store.put(response())
    await store.delete("org_a", "resp_sluice_1")
    with pytest.raises(NotFound):
        await store.get("org_a", "resp_sluice_1")


async def test_an_id_is_stored_once(store: ResponseStore) -> None:
    await store.put(response())
    with pytest.raises(AlreadyExists):
        await store.put(response())


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"org_id": ""}, "org_id"),
        ({"response_id": ""}, "response_id"),
        ({"response_json": "[]"}, "response_json"),
        ({"input_items_json": "{"}, "input_items_json"),
        ({"conversation_json": "{}"}, "conversation_json"),
        ({"conversation_json": json.dumps(["x" * MAX_STORED_BYTES])}, "response"),
    ],
)
async def test_what_is_not_stored(
    store: ResponseStore, changes: dict[str, str], param: str
) -> None:
    with pytest.raises(InvalidArgument) as err:
        await store.put(replace(response(), **changes))
    assert err.value.param == param


def test_retention_must_be_positive(engine: AsyncEngine) -> None:
    with pytest.raises(ValueError):
        ResponseStore(engine, retention_s=0)


@pytest.fixture
async def stub(store: ResponseStore) -> AsyncIterator[metering_pb2_grpc.ResponseStoreServiceStub]:
    running = await start_server(
        "127.0.0.1:0",
        lambda server: responses_servicer.add_to_server(server, store),
        [responses_servicer.SERVICE_NAME],
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield metering_pb2_grpc.ResponseStoreServiceStub(channel)
    finally:
        await stop_server(running, grace_s=0)


async def test_the_grpc_service(
    stub: metering_pb2_grpc.ResponseStoreServiceStub, clock: FakeClock
) -> None:
    sent = responses_servicer.encode(response())
    put = await stub.PutResponse(metering_pb2.PutResponseRequest(response=sent))
    assert put.created_ms == int(START * 1000) and put.expires_ms > put.created_ms
    got = await stub.GetResponse(
        metering_pb2.GetResponseRequest(
            org_id="org_a", response_id="resp_sluice_1", include_items=True
        )
    )
    assert got == put
    brief = await stub.GetResponse(
        metering_pb2.GetResponseRequest(org_id="org_a", response_id="resp_sluice_1")
    )
    assert brief.response_json == put.response_json and not brief.conversation_json

    async def code(call: object) -> grpc.StatusCode:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call  # type: ignore[misc]
        return err.value.code()

    other = metering_pb2.GetResponseRequest(org_id="org_b", response_id="resp_sluice_1")
    assert await code(stub.GetResponse(other)) == grpc.StatusCode.NOT_FOUND
    again = metering_pb2.PutResponseRequest(response=sent)
    assert await code(stub.PutResponse(again)) == grpc.StatusCode.ALREADY_EXISTS
    bad = metering_pb2.PutResponseRequest(response=metering_pb2.StoredResponse(org_id="o"))
    assert await code(stub.PutResponse(bad)) == grpc.StatusCode.INVALID_ARGUMENT
    await stub.DeleteResponse(
        metering_pb2.DeleteResponseRequest(org_id="org_a", response_id="resp_sluice_1")
    )
    gone = metering_pb2.DeleteResponseRequest(org_id="org_a", response_id="resp_sluice_1")
    assert await code(stub.DeleteResponse(gone)) == grpc.StatusCode.NOT_FOUND
