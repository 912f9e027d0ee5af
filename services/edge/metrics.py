"""Prometheus metrics of the edge, in a registry owned by the app (no process globals)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


@dataclass
class EdgeMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.requests = Counter(
            "sluice_requests_total",
            "Settled generation requests by endpoint, model and status.",
            ["endpoint", "model", "status"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "sluice_tokens_total",
            "Tokens billed, by kind (prompt or completion) and model.",
            ["kind", "model"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "sluice_request_latency_seconds",
            "Time from admission to the end of the response.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "sluice_time_to_first_token_seconds",
            "Time from admission to the first generated token.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def observe(
        self,
        endpoint: str,
        model: str,
        status: str,
        prompt_tokens: int,
        completion_tokens: int,
        latency_s: float,
        ttft_s: float | None,
    ) -> None:
        self.requests.labels(endpoint, model, status).inc()
        self.tokens.labels("prompt", model).inc(prompt_tokens)
        self.tokens.labels("completion", model).inc(completion_tokens)
        self.latency.labels(endpoint).observe(latency_s)
        if ttft_s is not None:
            self.ttft.labels(endpoint).observe(ttft_s)


async def metrics_endpoint(request: Request) -> Response:
    metrics: EdgeMetrics = request.app.state.backends.metrics
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
