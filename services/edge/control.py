"""Control-plane calls that survive a replica dying under them.

A call in flight when its auth or metering replica is killed fails with UNAVAILABLE from the
transport (the connection reset; no Sluice error code in the trailers); the channel has already
moved on to the replicas that remain, so trying again at once succeeds. An UNAVAILABLE the
service chose itself (metering's Redis is down: it fails closed) carries an error code and is
not retried here.

For `Admit` a retry can leave one extra reservation behind: the killed replica may have committed
the first admission before it died. That reservation is never settled and is released, with its
concurrency slot, when `SLUICE_RESERVATION_TTL_S` runs out (metering's sweeper writes its
"expired" record); nothing is charged for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from services.common.grpc_server import chosen_by_service

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_DELAYS_S = (0.05, 0.25)


def transport_failure(exc: grpc.aio.AioRpcError) -> bool:
    """UNAVAILABLE that no server chose (see the module docstring)."""
    if exc.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    return not chosen_by_service(exc)


async def with_transport_retries(
    method: Callable[..., Awaitable[T]], request: Any, *, timeout_s: float
) -> T:
    """`method(request)`, tried again (twice, quickly) after a transport failure."""
    for delay in RETRY_DELAYS_S:
        try:
            return await method(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            if not transport_failure(exc):
                raise
            log.info(
                "%s failed in transit (%s); trying again", type(request).__name__, exc.details()
            )
        await asyncio.sleep(delay)
    return await method(request, timeout=timeout_s)
