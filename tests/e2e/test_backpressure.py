"""One slot, a queue of one and a 20-second deadline: cancellation and deadlines free the slot, a
full queue is refused with 429."""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Stack, start_stack, stop_stack
from tests.e2e.test_chat import FRANCE, MODEL


@pytest.fixture(scope="module")
def small_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp: Path = tmp_path_factory.mktemp("small")
    stack = start_stack(
        f"sqlite+aiosqlite:///{tmp / 'sluice.db'}",
        tmp,
        SLUICE_ENGINE_MAX_BATCH="1",
        SLUICE_ENGINE_MAX_QUEUE="1",
        SLUICE_REQUEST_TIMEOUT_S="20",
    )
    yield stack
    stop_stack(stack)


def body(max_tokens: int, stream: bool = True) -> dict[str, object]:
    return {
        "model": MODEL,
        "messages": FRANCE,
        "temperature": 0,
        "max_tokens": max_tokens,
        "stream": stream,
    }


def records(stack: Stack) -> list[dict[str, object]]:
    out = stack.cli("usage", "--json", "--limit", "1000").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_disconnect_cancels_and_frees_the_slot(small_stack: Stack) -> None:
    headers = {"authorization": f"Bearer {small_stack.dev_key}"}
    url = f"{small_stack.base_url}/chat/completions"
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", url, json=body(4000), headers=headers) as resp:
            assert resp.status_code == 200
            request_id = resp.headers["x-request-id"]
            lines = resp.iter_lines()
            got = [next(lines) for _ in range(6)]
            assert any(line.startswith("data: {") for line in got)
        # The client is gone: the edge settles the request as cancelled...
        for _ in range(100):
            rec = {r["request_id"]: r for r in records(small_stack)}.get(request_id)
            if rec:
                break
            time.sleep(0.1)
        assert rec is not None and rec["status"] == "cancelled"
        assert 0 < int(str(rec["completion_tokens"])) < 4000
        # ...and the engine frees the only slot. One request is served within the edge's 20 s
        # deadline, which the 4000-token sequence would outlast had it kept the slot; it also
        # waits out the cancellation's trip to the engine without guessing a sleep.
        assert client.post(url, json=body(4, stream=False), headers=headers).status_code == 200
        # Then two requests both succeed (one runs, one waits in the queue of one). A slot still
        # held would leave no room for the second.
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            futures = [
                pool.submit(client.post, url, json=body(4, stream=False), headers=headers)
                for _ in range(2)
            ]
            statuses = sorted(f.result().status_code for f in futures)
    assert statuses == [200, 200]


def test_full_queue_is_429_with_retry_after(small_stack: Stack) -> None:
    headers = {"authorization": f"Bearer {small_stack.dev_key}"}
    url = f"{small_stack.base_url}/chat/completions"
    with httpx.Client(timeout=120) as client, concurrent.futures.ThreadPoolExecutor(3) as pool:
        futures = [
            pool.submit(client.post, url, json=body(150, stream=False), headers=headers)
            for _ in range(3)
        ]
        responses = [f.result() for f in futures]
    refused = [r for r in responses if r.status_code == 429]
    assert len(refused) == 1, [r.status_code for r in responses]
    assert int(refused[0].headers["retry-after"]) >= 1
    err = refused[0].json()["error"]
    assert err["code"] == "engine_overloaded"
    assert sorted(r.status_code for r in responses) == [200, 200, 429]
    statuses = [r["status"] for r in records(small_stack)]
    assert "rejected" in statuses


def test_deadline_reaches_the_engine(small_stack: Stack) -> None:
    headers = {"authorization": f"Bearer {small_stack.dev_key}"}
    url = f"{small_stack.base_url}/chat/completions"
    with httpx.Client(timeout=60) as client:
        # 4000 tokens take far longer than the edge's 20 s deadline on this model.
        slow = client.post(url, json=body(4000, stream=False), headers=headers)
        assert slow.status_code == 504
        assert slow.json()["error"]["type"] == "timeout"
        # The engine dropped the sequence when the deadline cancelled the call: the only slot
        # serves the next request at once.
        after = client.post(url, json=body(4, stream=False), headers=headers)
    assert after.status_code == 200
    rec = {r["request_id"]: r for r in records(small_stack)}[slow.headers["x-request-id"]]
    assert rec["status"] == "error"
