"""A real metering gRPC server in the test's process, on a migrated database, with a channel
to it: for the edge's clients of metering (leases, Meter streams) and the benchmark's."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.db import create_engine, migrate
from services.common.grpc_server import RunningServer, start_server
from services.metering.ledger import Ledger
from services.metering.main import MIGRATIONS, VERSION_TABLE
from services.metering.servicer import SERVICE_NAME, MeteringServicer
from services.pb.metering.v1 import metering_pb2_grpc


@dataclass
class Metering:
    ledger: Ledger
    running: RunningServer
    servicer: MeteringServicer
    stub: metering_pb2_grpc.MeteringServiceStub
    engine: AsyncEngine

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.running.port}"


@contextlib.asynccontextmanager
async def serve_metering(
    url: str,
    servicer_type: type[MeteringServicer] = MeteringServicer,
    reservation_ttl_s: float = 60.0,
) -> AsyncIterator[Metering]:
    engine = create_engine(url)
    await migrate(engine, MIGRATIONS, VERSION_TABLE)
    ledger = Ledger(engine, reservation_ttl_s=reservation_ttl_s)
    servicer = servicer_type(ledger)
    running = await start_server(
        "127.0.0.1:0",
        lambda s: metering_pb2_grpc.add_MeteringServiceServicer_to_server(servicer, s),
        [SERVICE_NAME],
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        yield Metering(
            ledger, running, servicer, metering_pb2_grpc.MeteringServiceStub(channel), engine
        )
    finally:
        await channel.close()
        await running.server.stop(0)
        await engine.dispose()
