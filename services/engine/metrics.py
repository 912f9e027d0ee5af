"""The engine's Prometheus metrics, on a port of its own (SLUICE_ENGINE_METRICS_PORT).

`sluice_engine_queue_depth` (requests waiting for a batch slot) is what an autoscaler scales
engines on: it grows only when every slot is busy. The values are read from each scheduler when
scraped, so serving them costs the request path nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Gauge, start_http_server


class _Loaded(Protocol):
    def load(self) -> tuple[int, int]: ...


def registry_for(schedulers: Mapping[str, _Loaded]) -> CollectorRegistry:
    """Gauges of each model's scheduler: requests waiting and sequences running."""
    registry = CollectorRegistry()
    waiting = Gauge(
        "sluice_engine_queue_depth",
        "Requests waiting for a batch slot of the engine.",
        ["model"],
        registry=registry,
    )
    running = Gauge(
        "sluice_engine_running_sequences",
        "Sequences in the engine's batch.",
        ["model"],
        registry=registry,
    )
    for name, scheduler in schedulers.items():
        waiting.labels(name).set_function(_part(scheduler.load, 1))
        running.labels(name).set_function(_part(scheduler.load, 0))
    return registry


def _part(load: Callable[[], tuple[int, int]], index: int) -> Callable[[], float]:
    return lambda: float(load()[index])


def serve_metrics(port: int, schedulers: Mapping[str, _Loaded], host: str = "0.0.0.0") -> Any:
    """Serves /metrics on `host:port` from a thread; returns the server (`.shutdown()` stops
    it)."""
    server, _thread = start_http_server(port, addr=host, registry=registry_for(schedulers))
    return server
