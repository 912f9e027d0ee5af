"""Control-plane calls retried after a transport failure (a replica died under the call), and
only then: a service's own UNAVAILABLE (it fails closed) and every other status go through."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from services.common.grpc_server import ERROR_CODE_KEY
from services.edge import control
from services.edge.control import transport_failure, with_transport_retries


def rpc_error(code: grpc.StatusCode, **trailing: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing.items()), "x"
    )


class Flaky:
    def __init__(self, *failures: grpc.aio.AioRpcError) -> None:
        self.failures = list(failures)
        self.calls = 0

    async def __call__(self, request: str, **call: Any) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return request.upper()


@pytest.fixture(autouse=True)
def no_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(control, "RETRY_DELAYS_S", (0.0, 0.0))


@pytest.mark.parametrize(
    ("error", "is_transport"),
    [
        (rpc_error(grpc.StatusCode.UNAVAILABLE), True),
        (rpc_error(grpc.StatusCode.UNAVAILABLE, **{ERROR_CODE_KEY: "service_unavailable"}), False),
        (rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED), False),
        (rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED), False),
    ],
)
def test_transport_failure(error: grpc.aio.AioRpcError, is_transport: bool) -> None:
    assert transport_failure(error) is is_transport


async def test_a_transport_failure_is_retried() -> None:
    method = Flaky(rpc_error(grpc.StatusCode.UNAVAILABLE), rpc_error(grpc.StatusCode.UNAVAILABLE))
    assert await with_transport_retries(method, "ok", timeout_s=1) == "OK"
    assert method.calls == 3


async def test_retries_end_with_the_last_failure() -> None:
    method = Flaky(*(rpc_error(grpc.StatusCode.UNAVAILABLE) for _ in range(3)))
    with pytest.raises(grpc.aio.AioRpcError):
        await with_transport_retries(method, "ok", timeout_s=1)
    assert method.calls == 3


async def test_a_service_that_fails_closed_is_not_retried() -> None:
    closed = rpc_error(grpc.StatusCode.UNAVAILABLE, **{ERROR_CODE_KEY: "service_unavailable"})
    method = Flaky(closed)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await with_transport_retries(method, "ok", timeout_s=1)
    assert err.value is closed and method.calls == 1
