"""The engine's /metrics: queue depth and running sequences per model, read when scraped."""

from __future__ import annotations

import socket

import httpx
from prometheus_client import generate_latest

from services.engine.metrics import registry_for, serve_metrics


class FakeScheduler:
    def __init__(self) -> None:
        self.running, self.waiting = 0, 0

    def load(self) -> tuple[int, int]:
        return self.running, self.waiting


def test_gauges_follow_the_scheduler() -> None:
    scheduler = FakeScheduler()
    registry = registry_for({"smollm2-135m-instruct": scheduler})
    scheduler.running, scheduler.waiting = 8, 3
    text = generate_latest(registry).decode()
    assert 'sluice_engine_queue_depth{model="smollm2-135m-instruct"} 3.0' in text
    assert 'sluice_engine_running_sequences{model="smollm2-135m-instruct"} 8.0' in text


def test_served_on_its_own_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    scheduler = FakeScheduler()
    scheduler.waiting = 5
    server = serve_metrics(port, {"m": scheduler}, host="127.0.0.1")
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    finally:
        server.shutdown()
        server.server_close()
    assert 'sluice_engine_queue_depth{model="m"} 5.0' in text
