"""What happens when a governance service dies: the edge fails closed (503, nothing generated), and
every usage record metering acknowledged survives a kill -9 right after. Own stack (PostgreSQL),
since these tests stop and kill services."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import openai
import pytest
from openai import OpenAI

from bench.stack import free_port
from services.pb.metering.v1 import metering_pb2, metering_pb2_grpc
from tests.e2e.conftest import services_on_postgres
from tests.e2e.processes import Services

MODEL = "smollm2-135m-instruct"
RESERVATION_TTL_S = 6


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    # Requests here take well under a second; a short reservation lifetime lets the test of an
    # edge crash see its reservation expire.
    env = {"SLUICE_RESERVATION_TTL_S": str(RESERVATION_TTL_S)}
    with services_on_postgres(tmp_path_factory.mktemp("failures"), env) as services:
        yield services


def tokens_served(svc: Services) -> float:
    """The edge's own count of completion tokens it passed to clients."""
    text = httpx.get(svc.edges["edge"].base_url.removesuffix("/v1") + "/metrics").text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("sluice_tokens_total") and 'kind="completion"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def ask(client: OpenAI) -> str:
    resp = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0
    )
    return resp.choices[0].message.content or ""


@pytest.mark.parametrize("service", ["metering", "auth"])
def test_edge_fails_closed_when_a_governance_service_is_down(svc: Services, service: str) -> None:
    warm = svc.new_key("closed", f"warm-{service}")
    # A key the edge has never seen: nothing about it can be cached anywhere.
    key = svc.new_key("closed", f"k-{service}")
    with OpenAI(base_url=svc.edges["edge"].base_url, api_key=warm, max_retries=0) as client:
        ask(client)
    with OpenAI(base_url=svc.edges["edge"].base_url, api_key=key, max_retries=0) as client:
        before = tokens_served(svc)
        svc.stop(service)
        try:
            for stream in (False, True):
                with pytest.raises(openai.APIStatusError) as err:
                    client.chat.completions.create(
                        model=MODEL,
                        messages=[{"role": "user", "content": "hi"}],
                        max_tokens=4,
                        stream=stream,
                    )
                assert err.value.status_code == 503
                assert service in err.value.message
                assert err.value.response.headers["retry-after"]
            assert tokens_served(svc) == before  # nothing was generated ungoverned
        finally:
            svc.start(service)
        svc.wait_ready("edge")
        ask(client)  # and it serves again once the service is back


async def settle_batch(addr: str, n: int) -> list[str]:
    """Settles n requests directly over gRPC; returns the ids metering acknowledged."""
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = metering_pb2_grpc.MeteringServiceStub(channel)
        acks = await asyncio.gather(
            *(
                stub.Settle(
                    metering_pb2.SettleRequest(
                        org_id="org-durable",
                        key_id="key_durable",
                        model=MODEL,
                        prompt_tokens=10,
                        completion_tokens=i,
                        status="ok",
                        request_id=f"req-durable-{i}",
                    ),
                    timeout=30,
                )
                for i in range(n)
            )
        )
    return [a.record.id for a in acks]


async def query_ids(addr: str) -> set[str]:
    async with grpc.aio.insecure_channel(addr) as channel:
        resp = await metering_pb2_grpc.MeteringServiceStub(channel).QueryUsage(
            metering_pb2.QueryUsageRequest(
                filter=metering_pb2.UsageFilter(org_id="org-durable"), limit=1000
            ),
            timeout=30,
        )
    return {r.id for r in resp.records}


def test_acknowledged_settlements_survive_kill_9_of_metering(svc: Services) -> None:
    addr = svc.env["SLUICE_METERING_ADDR"]
    acked = asyncio.run(settle_batch(addr, 200))
    svc.stop("metering", signal.SIGKILL)  # right after the last acknowledgement
    svc.start("metering")
    assert set(acked) <= asyncio.run(query_ids(addr))
    svc.wait_ready("edge")
    # And through HTTP: a response the client received is already in the ledger.
    key = svc.new_key("durable-http", "k")
    with OpenAI(base_url=svc.edges["edge"].base_url, api_key=key, max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    request_id = raw.headers["x-request-id"]
    svc.stop("metering", signal.SIGKILL)
    svc.start("metering")
    usage = svc.cli("usage", "--org", "durable-http", "--format", "json").stdout
    assert request_id in usage


def key_budget(svc: Services, key: str) -> dict[str, Any]:
    with OpenAI(base_url=svc.edges["edge"].base_url, api_key=key, max_retries=0) as client:
        page = client.get("/usage/budgets", cast_to=object)
    assert isinstance(page, dict)
    (budget,) = [b for b in page["data"] if b["scope"] == "key"]
    return dict(budget)


def test_reservation_of_a_crashed_edge_expires_and_is_released(svc: Services) -> None:
    key = svc.new_key("crashed", "k", "--budget-tokens", "5000", "--budget-period", "day")
    svc.start("edge-crash", SLUICE_EDGE_PORT=str(free_port()))
    with OpenAI(base_url=svc.edges["edge-crash"].base_url, api_key=key, max_retries=0) as client:
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=400, stream=True
        )
        next(iter(stream))  # admitted and streaming: its reservation is held
        svc.stop("edge-crash", signal.SIGKILL)
    held = key_budget(svc, key)
    assert held["reserved_tokens"] > 0 and held["used_tokens"] == 0
    deadline = time.monotonic() + RESERVATION_TTL_S + 30
    while key_budget(svc, key)["reserved_tokens"] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert key_budget(svc, key)["reserved_tokens"] == 0
    rows = svc.ledger("crashed")
    assert [r["status"] for r in rows] == ["expired"]
