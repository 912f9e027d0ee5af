"""The edge's engine pool against real gRPC servers on loopback: addresses parsed into engines,
the less loaded engine chosen, engines out of rotation when their health says so, failover
before the first message (and none after it), DNS names resolved into engines, and the
in-flight counts and metrics."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from prometheus_client import CollectorRegistry, generate_latest

from services.common.grpc_server import HTTP_STATUS_KEY, RunningServer, start_server
from services.edge.drain import Drain
from services.edge.engines import (
    MAX_ATTEMPTS,
    SERVING,
    UNREACHABLE,
    EngineAddresses,
    EnginePool,
    EnginePoolCollector,
    engine_addresses,
)
from services.pb.engine.v1 import engine_pb2, engine_pb2_grpc
from tests.edge.polling import until

REQUEST = engine_pb2.GenerateRequest(model="m", prompt="hi")


@dataclass
class FakeEngine(engine_pb2_grpc.EngineServiceServicer):
    """An engine that answers `tokens` messages, or refuses with `refuse` before any, or fails
    with `fail_after` after its first message; `hold` keeps a stream open until set."""

    name: str
    tokens: int = 2
    refuse: grpc.StatusCode | None = None
    fail_after_first: bool = False
    hold: asyncio.Event | None = None
    calls: int = 0
    cancelled: int = 0
    models: list[str] = field(default_factory=lambda: ["m"])

    async def Generate(  # noqa: N802 - gRPC method name
        self, request: engine_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[engine_pb2.GenerateResponse]:
        self.calls += 1
        if self.refuse is not None:
            await context.abort(self.refuse, f"{self.name} refuses")
        try:
            yield engine_pb2.GenerateResponse(text=f"{self.name}0", token_count=1)
            if self.fail_after_first:
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"{self.name} broke")
            if self.hold is not None:
                await self.hold.wait()
            for i in range(1, self.tokens):
                yield engine_pb2.GenerateResponse(text=f"{self.name}{i}", token_count=1)
            yield engine_pb2.GenerateResponse(
                finish_reason="stop",
                usage=engine_pb2.Usage(prompt_tokens=1, completion_tokens=self.tokens),
            )
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled += 1
            raise

    async def ResolveModel(  # noqa: N802
        self, request: engine_pb2.ResolveModelRequest, context: grpc.aio.ServicerContext
    ) -> engine_pb2.ModelInfo:
        if self.refuse is not None:
            await context.abort(self.refuse, f"{self.name} refuses")
        self.calls += 1
        return engine_pb2.ModelInfo(name=request.model, digest=self.name)


@dataclass
class Running:
    fake: FakeEngine
    server: RunningServer

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    async def set_health(self, status: int) -> None:
        await self.server.health.set("", status)


@pytest.fixture
async def engines() -> AsyncIterator[Callable[..., Any]]:
    started: list[RunningServer] = []

    async def start(name: str, **behaviour: Any) -> Running:
        fake = FakeEngine(name, **behaviour)
        server = await start_server(
            "127.0.0.1:0",
            lambda s: engine_pb2_grpc.add_EngineServiceServicer_to_server(fake, s),
            ["sluice.engine.v1.EngineService"],
        )
        started.append(server)
        return Running(fake, server)

    yield start
    for server in started:
        await server.server.stop(0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("127.0.0.1:50053", EngineAddresses(fixed=(("127.0.0.1:50053", "127.0.0.1:50053"),))),
        ("engine:50053", EngineAddresses(fixed=(("engine:50053", "engine:50053"),))),
        (
            "10.0.0.5:50053, 10.0.0.6:50053",
            EngineAddresses(
                fixed=(
                    ("10.0.0.5:50053", "10.0.0.5:50053"),
                    ("10.0.0.6:50053", "10.0.0.6:50053"),
                )
            ),
        ),
        (
            "ipv4:10.0.0.5:50053,10.0.0.6:50053",
            EngineAddresses(
                fixed=(
                    ("10.0.0.5:50053", "ipv4:10.0.0.5:50053"),
                    ("10.0.0.6:50053", "ipv4:10.0.0.6:50053"),
                )
            ),
        ),
        (
            "ipv6:[fd00::5]:50053,[fd00::6]:50053",
            EngineAddresses(
                fixed=(
                    ("[fd00::5]:50053", "ipv6:[fd00::5]:50053"),
                    ("[fd00::6]:50053", "ipv6:[fd00::6]:50053"),
                )
            ),
        ),
        ("dns:///engine.sluice.svc:50053", EngineAddresses(dns=("engine.sluice.svc", 50053))),
        ("dns://10.0.0.53/engine:50053", EngineAddresses(dns=("engine", 50053))),
        ("dns:engine", EngineAddresses(dns=("engine", 443))),
        ("dns:///[fd00::5]:50053", EngineAddresses(dns=("fd00::5", 50053))),
        ("unix:/run/engine.sock", EngineAddresses(fixed=(("unix:/run/engine.sock",) * 2,))),
    ],
)
def test_engine_addresses(setting: str, expected: EngineAddresses) -> None:
    assert engine_addresses(setting) == expected


@pytest.mark.parametrize("setting", ["", "engine-a:1,engine-b:1", "dns:///engine:port", "ipv4:"])
def test_malformed_engine_addresses_are_refused(setting: str) -> None:
    with pytest.raises(ValueError):
        engine_addresses(setting)


async def test_the_engine_with_fewer_calls_in_flight_is_chosen() -> None:
    pool = EnginePool("127.0.0.1:1,127.0.0.1:2,127.0.0.1:3", rng=random.Random(7))
    a, b, c = pool.engines.values()
    a.outstanding, b.outstanding, c.outstanding = 5, 0, 5
    picks = [pool.pick() for _ in range(300)]
    # Two at random, the lighter of the two: the idle engine wins whenever it is drawn, and the
    # two busy ones only meet each other.
    assert picks.count(b) > picks.count(a) + picks.count(c)
    assert {e for e in picks if e is not b} <= {a, c}
    assert pool.pick(exclude=[b.name, a.name]) is c
    assert pool.pick(exclude=[a.name, b.name, c.name]) is None
    await pool.close()


async def test_engines_out_of_rotation_are_not_chosen_unless_none_is_left() -> None:
    pool = EnginePool("127.0.0.1:1,127.0.0.1:2", rng=random.Random(1))
    a, b = pool.engines.values()
    a.health, b.health = "NOT_SERVING", SERVING
    assert {pool.pick() for _ in range(50)} == {b}
    b.health = UNREACHABLE
    # Health can lag behind: with nothing usable, any engine is better than none.
    assert {pool.pick() for _ in range(50)} == {a, b}
    await pool.close()


async def test_failover_before_the_first_message(engines: Callable[..., Any]) -> None:
    full = await engines("full", refuse=grpc.StatusCode.RESOURCE_EXHAUSTED)
    down = await engines("down", refuse=grpc.StatusCode.UNAVAILABLE)
    ok = await engines("ok", tokens=3)
    pool = EnginePool(f"{full.addr},{down.addr},{ok.addr}")
    # The two failing engines look the least loaded, so they are tried first.
    pool.engines[ok.addr].outstanding = 100
    stream, first = await pool.generate(REQUEST, 30)
    assert first.text == "ok0"
    assert [m.text async for m in stream] == ["ok1", "ok2", ""]
    assert (full.fake.calls, down.fake.calls, ok.fake.calls) == (1, 1, 1)
    assert pool.failovers == {"RESOURCE_EXHAUSTED": 1, "UNAVAILABLE": 1}
    await pool.close()


async def test_an_engine_that_is_not_listening_is_replaced(engines: Callable[..., Any]) -> None:
    ok = await engines("ok")
    dead = f"127.0.0.1:{free_port()}"
    pool = EnginePool(f"{dead},{ok.addr}")
    pool.engines[ok.addr].outstanding = 100
    _, first = await pool.generate(REQUEST, 30)
    assert first.text == "ok0"
    assert pool.failovers == {"UNAVAILABLE": 1}
    # Suspect for a while: the next request goes straight to the one that answers.
    pool.engines[ok.addr].outstanding = 100
    _, again = await pool.generate(REQUEST, 30)
    assert again.text == "ok0" and pool.failovers == {"UNAVAILABLE": 1}
    await pool.close()


async def test_no_retry_after_the_first_message(engines: Callable[..., Any]) -> None:
    broken = await engines("broken", fail_after_first=True)
    ok = await engines("ok")
    pool = EnginePool(f"{broken.addr},{ok.addr}")
    pool.engines[ok.addr].outstanding = 100
    stream, first = await pool.generate(REQUEST, 30)
    assert first.text == "broken0"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stream:
            pass
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert ok.fake.calls == 0
    await pool.close()


async def test_when_every_engine_refuses_the_last_refusal_is_raised(
    engines: Callable[..., Any],
) -> None:
    fulls = [await engines(f"full{i}", refuse=grpc.StatusCode.RESOURCE_EXHAUSTED) for i in range(4)]
    pool = EnginePool(",".join(f.addr for f in fulls))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await pool.generate(REQUEST, 30)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert sum(f.fake.calls for f in fulls) == MAX_ATTEMPTS
    await pool.close()


async def test_a_refusal_of_the_request_itself_is_not_retried(engines: Callable[..., Any]) -> None:
    bad = await engines("bad", refuse=grpc.StatusCode.INVALID_ARGUMENT)
    ok = await engines("ok")
    pool = EnginePool(f"{bad.addr},{ok.addr}")
    pool.engines[ok.addr].outstanding = 100
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await pool.generate(REQUEST, 30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert ok.fake.calls == 0
    await pool.close()


async def test_calls_in_flight_are_counted_until_they_end(engines: Callable[..., Any]) -> None:
    hold = asyncio.Event()
    one = await engines("one", hold=hold)
    pool = EnginePool(one.addr)
    engine = pool.engines[one.addr]
    finished, _ = await pool.generate(REQUEST, 30)
    cancelled, _ = await pool.generate(REQUEST, 30)
    assert engine.outstanding == 2
    cancelled.cancel()
    await until(lambda: engine.outstanding == 1)
    hold.set()
    assert [m.finish_reason async for m in finished][-1] == "stop"
    await until(lambda: engine.outstanding == 0)
    await until(lambda: one.fake.cancelled == 1)
    await pool.close()


async def test_health_watch_takes_an_engine_out_and_back(engines: Callable[..., Any]) -> None:
    a = await engines("a")
    b = await engines("b")
    pool = EnginePool(f"{a.addr},{b.addr}")
    await pool.start()
    ea, eb = pool.engines[a.addr], pool.engines[b.addr]
    await until(lambda: ea.health == SERVING and eb.health == SERVING)
    await a.set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
    await until(lambda: ea.health == "NOT_SERVING")
    assert pool.states()[a.addr] == {"health": "NOT_SERVING", "outstanding": 0, "usable": False}
    for _ in range(5):
        _, first = await pool.generate(REQUEST, 30)
        assert first.text == "b0"
    await a.set_health(health_pb2.HealthCheckResponse.SERVING)
    await until(lambda: pool.states()[a.addr]["usable"])
    await a.server.server.stop(0)
    await until(lambda: ea.health == UNREACHABLE)
    assert pool.any_usable()
    await pool.close()


async def test_unary_calls_fail_over_on_unavailable_only(engines: Callable[..., Any]) -> None:
    down = await engines("down", refuse=grpc.StatusCode.UNAVAILABLE)
    ok = await engines("ok")
    pool = EnginePool(f"{down.addr},{ok.addr}")
    pool.engines[ok.addr].outstanding = 100
    info = await pool.unary(
        lambda stub: stub.ResolveModel, engine_pb2.ResolveModelRequest(model="m"), 10
    )
    assert info.digest == "ok"
    missing = await engines("missing", refuse=grpc.StatusCode.NOT_FOUND)
    lone = EnginePool(f"{missing.addr},{ok.addr}")
    lone.engines[ok.addr].outstanding = 100
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await lone.unary(
            lambda stub: stub.ResolveModel, engine_pb2.ResolveModelRequest(model="m"), 10
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    await pool.close()
    await lone.close()


async def test_no_engine_at_all_is_unavailable() -> None:
    pool = EnginePool("dns:///engines.invalid:50053", resolve=_resolver({}))
    await pool.start()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await pool.generate(REQUEST, 10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    await pool.close()


def _resolver(answers: dict[str, list[str]]) -> Callable[[str, int], Any]:
    async def resolve(host: str, port: int) -> list[Any]:
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "unknown")
        family = {True: socket.AF_INET6, False: socket.AF_INET}
        return [(family[":" in ip], socket.SOCK_STREAM, 6, "", (ip, port)) for ip in answers[host]]

    return resolve


async def test_dns_names_resolve_into_engines_that_come_and_go(
    engines: Callable[..., Any],
) -> None:
    answers = {"engines": ["127.0.0.1", "127.0.0.2", "127.0.0.1"]}
    pool = EnginePool("dns:///engines:50053", resolve=_resolver(answers))
    await pool.start()
    assert sorted(pool.engines) == ["127.0.0.1:50053", "127.0.0.2:50053"]
    answers["engines"] = ["127.0.0.2", "::1"]
    await pool.resolve_once()
    assert sorted(pool.engines) == ["127.0.0.2:50053", "[::1]:50053"]
    # A failed lookup keeps the engines as they were.
    del answers["engines"]
    await pool.resolve_once()
    assert sorted(pool.engines) == ["127.0.0.2:50053", "[::1]:50053"]
    await pool.close()


async def test_a_dns_engine_serves(engines: Callable[..., Any]) -> None:
    one = await engines("one")
    port = one.server.port
    pool = EnginePool(f"dns:///engines:{port}", resolve=_resolver({"engines": ["127.0.0.1"]}))
    await pool.start()
    _, first = await pool.generate(REQUEST, 30)
    assert first.text == "one0"
    await pool.close()


async def test_a_stream_open_at_the_drain_deadline_ends_with_the_shutdown_error(
    engines: Callable[..., Any],
) -> None:
    hold = asyncio.Event()
    one = await engines("one", hold=hold)
    drain = Drain()
    pool = EnginePool(one.addr, drain)
    stream, first = await pool.generate(REQUEST, 30)
    messages = aiter(stream)
    reading = asyncio.create_task(anext(messages))
    await asyncio.sleep(0.05)
    drain.expire()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await reading
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert dict(err.value.trailing_metadata())[HTTP_STATUS_KEY] == "503"
    await until(lambda: one.fake.cancelled == 1)  # the engine stops generating
    await pool.close()


async def test_metrics_show_each_engine(engines: Callable[..., Any]) -> None:
    one = await engines("one", hold=asyncio.Event())
    pool = EnginePool(one.addr)
    registry = CollectorRegistry()
    registry.register(EnginePoolCollector(pool))
    stream, _ = await pool.generate(REQUEST, 30)
    text = generate_latest(registry).decode()
    assert f'sluice_engine_outstanding_requests{{engine="{one.addr}"}} 1.0' in text
    assert f'sluice_engine_up{{engine="{one.addr}"}} 1.0' in text
    stream.cancel()
    await pool.close()
