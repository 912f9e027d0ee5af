"""Entry point of the edge process: `python -m services.edge`."""

from __future__ import annotations

import logging

import uvicorn

from services.common.grpc_server import configure_logging
from services.common.settings import Settings
from services.common.tracing import setup_tracing
from services.edge.app import create_app
from services.edge.drain import Drain, DrainingServer


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level)
    # httpcore's DEBUG trace prints provider response headers (which can name the customer's
    # provider organization); request headers, where the provider key is, are never printed.
    logging.getLogger("httpcore").setLevel(max(logging.INFO, logging.getLogger().level))
    # httpx logs every provider request at INFO: a line formatted and written per request, a few
    # percent of the edge's CPU on the gateway path (docs/PERFORMANCE.md). Failures are logged
    # by the provider client itself.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    drain = Drain()
    tracing = setup_tracing("edge")
    config = uvicorn.Config(
        create_app(settings, drain, tracing),
        host=settings.edge_host,
        port=settings.edge_port,
        log_level=settings.log_level.lower(),
        # Many short requests per connection from SDK clients: keep connections around.
        timeout_keep_alive=30,
        # The C parser: a measurable share of the gateway's per-request cost on a small CPU.
        http="httptools",
        # uvloop where it is installed (a dependency on Linux), asyncio otherwise: the same rule
        # as the gRPC services' run_service (services.common.grpc_server).
        loop="auto",
        access_log=False,
        # The client address is the TCP peer unless it is a trusted proxy; the edge decides that
        # itself (services.edge.client_ip), so uvicorn must not rewrite it from headers.
        proxy_headers=False,
    )
    # SIGTERM drains: not ready at once, no new connections after SLUICE_DRAIN_DELAY_S, streams
    # ended SLUICE_DRAIN_GRACE_S later, every request settled before the process exits.
    try:
        DrainingServer(config, drain, settings.drain_delay_s, settings.drain_grace_s).run()
    finally:
        tracing.shutdown()


if __name__ == "__main__":
    main()
