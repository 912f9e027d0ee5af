"""The engines behind the edge: one gRPC channel per engine, chosen by this edge's outstanding
calls, watched over gRPC health, with failover before the first token.

`SLUICE_ENGINE_ADDR` names the engines as every address setting does (services.common.channels):
one address, an `ipv4:`/`ipv6:` or comma-separated list, or `dns:///name:port`. gRPC's own
balancing over one channel hides which engine a call went to, so the edge opens a channel per
engine instead: a list is split into its addresses, and a `dns:///` name is resolved here
(`loop.getaddrinfo`, again every `RESOLVE_INTERVAL_S`), so that engines added behind the name
get traffic within seconds and removed ones stop getting it. A single `host:port` is one engine
(its channel resolves the name itself).

Choosing: the power of two choices over the engines whose health watch says SERVING (or has not
answered yet): two at random, the one with fewer calls in flight from this edge. With a handful
of engines that is nearly always the least loaded; with a hundred it costs two reads and avoids
every edge piling onto the same "least loaded" engine at once.

Failover: a `Generate` call that fails before its first message — the engine is down or
draining (UNAVAILABLE), its queue is full (RESOURCE_EXHAUSTED) or it lacks the model
(NOT_FOUND, during a rolling deploy of a new export) — is sent to another engine, up to
`MAX_ATTEMPTS` engines and within the request's deadline; no output can have reached the client,
so nothing is repeated or billed twice. After the first message there is no retry: the route
ends the stream with an error event and bills what was delivered. `ResolveModel`, `ListModels`
and `CountTokens` go to any healthy engine, failing over on UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from services.common.channels import OPTIONS, target
from services.common.grpc_server import ERROR_CODE_KEY, HTTP_STATUS_KEY
from services.edge.drain import SHUTTING_DOWN, Drain, Interruptible
from services.pb.engine.v1 import engine_pb2, engine_pb2_grpc

log = logging.getLogger(__name__)

T = TypeVar("T")

# A dns:/// name is resolved again this often (sooner while it resolves to nothing).
RESOLVE_INTERVAL_S = 10.0
RESOLVE_EMPTY_INTERVAL_S = 1.0
# Engines tried per request at most: a fleet that is full everywhere answers 429 after a few
# tries instead of every request visiting every engine.
MAX_ATTEMPTS = 3
# An engine whose call failed as unreachable is not chosen for this long, unless its health
# watch reports it SERVING again or no other engine is left.
SUSPECT_S = 2.0
WATCH_RETRY_MIN_S = 0.2
WATCH_RETRY_MAX_S = 2.0
FAILOVER_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.NOT_FOUND,
    }
)
# Health as reported by the watch; UNKNOWN until it first answers, UNREACHABLE while it cannot.
SERVING = "SERVING"
UNKNOWN = "UNKNOWN"
UNREACHABLE = "UNREACHABLE"
# Per-engine channels: the common options (message size, fast reconnects) without the
# round-robin and health-checking service config. One address needs no balancing, and the
# edge's own health watch must see NOT_SERVING rather than a channel that refuses every call.
ENGINE_OPTIONS = tuple(opt for opt in OPTIONS if opt[0] != "grpc.service_config")


def _split_host_port(text: str) -> tuple[str, int]:
    """("host", port) of "host:port" or "[v6]:port"; gRPC's default port 443 when none."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, sep, port = text.rpartition(":")
        if not sep or ":" in host:
            host, port = text, ""
    if port and not port.isdigit():
        raise ValueError(f"{text!r}: bad port")
    if not host:
        raise ValueError(f"{text!r} names no host")
    return host, int(port or 443)


@dataclass(frozen=True)
class EngineAddresses:
    """What an engine address setting names: fixed engines (name, gRPC target), or a DNS name
    to resolve into engines."""

    fixed: tuple[tuple[str, str], ...] = ()
    dns: tuple[str, int] | None = None


def engine_addresses(addr: str) -> EngineAddresses:
    """Parses `SLUICE_ENGINE_ADDR` (see the module docstring); raises ValueError if malformed."""
    addr = addr.strip()
    if addr.startswith("dns:"):
        rest = addr.removeprefix("dns:")
        if rest.startswith("//"):
            # dns://[authority]/host:port; the authority (a DNS server) is left to the system.
            _, _, rest = rest[2:].partition("/")
        return EngineAddresses(dns=_split_host_port(rest))
    for scheme in ("ipv4:", "ipv6:"):
        if addr.startswith(scheme):
            parts = [p.strip() for p in addr.removeprefix(scheme).split(",") if p.strip()]
            if not parts:
                raise ValueError(f"{addr!r} names no address")
            return EngineAddresses(fixed=tuple((p, f"{scheme}{p}") for p in parts))
    if addr.startswith("unix:"):
        return EngineAddresses(fixed=((addr, addr),))
    parts = [p.strip() for p in addr.split(",") if p.strip()]
    if len(parts) > 1:
        target(addr)  # the same validation as a balanced channel's list
    if not parts:
        raise ValueError("empty gRPC address")
    return EngineAddresses(fixed=tuple((p, p) for p in parts))


def _resolved(host: str, port: int, infos: list[Any]) -> list[tuple[str, str]]:
    """(name, target) per distinct address `getaddrinfo` returned, in a stable order."""
    out: dict[str, str] = {}
    for family, _type, _proto, _canon, sockaddr in infos:
        ip = str(sockaddr[0])
        if family == socket.AF_INET6:
            out[f"[{ip}]:{port}"] = f"ipv6:[{ip}]:{port}"
        elif family == socket.AF_INET:
            out[f"{ip}:{port}"] = f"ipv4:{ip}:{port}"
    return sorted(out.items())


def _error(code: grpc.StatusCode, details: str, **trailing: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*trailing.items()),
        details,
    )


def no_engine_error() -> grpc.aio.AioRpcError:
    return _error(grpc.StatusCode.UNAVAILABLE, "no engine is available")


def shutting_down_error() -> grpc.aio.AioRpcError:
    """What a hosted stream still running at the drain's deadline raises (services.edge.drain);
    its status and message are the edge's, not an engine failure's."""
    return _error(
        grpc.StatusCode.UNAVAILABLE,
        "The server is shutting down and ended this response at the end of its grace period; "
        "the output delivered so far is billed. Retry the request.",
        **{HTTP_STATUS_KEY: "503", ERROR_CODE_KEY: SHUTTING_DOWN},
    )


@dataclass(eq=False)
class Engine:
    """One engine: its channel, this edge's calls in flight on it and its watched health."""

    name: str
    channel: grpc.aio.Channel
    health: str = UNKNOWN
    outstanding: int = 0
    removed: bool = False
    suspect_until: float = 0.0
    watch: asyncio.Task[None] | None = None
    stub: engine_pb2_grpc.EngineServiceStub = field(init=False)

    def __post_init__(self) -> None:
        self.stub = engine_pb2_grpc.EngineServiceStub(self.channel)

    def usable(self, now: float) -> bool:
        return not self.removed and self.health in (SERVING, UNKNOWN) and now >= self.suspect_until


class EngineStream:
    """A `Generate` call past its first message: iterate it for the rest; `cancel()` ends it.
    At the drain's deadline the iteration raises `shutting_down_error()` (and the call ends)."""

    def __init__(
        self, call: Any, messages: AsyncIterator[engine_pb2.GenerateResponse], drain: Drain
    ) -> None:
        self._call = call
        self._messages: Interruptible[engine_pb2.GenerateResponse] = drain.interruptible(
            messages, self._shutting_down
        )

    def _shutting_down(self) -> BaseException:
        self._call.cancel()
        return shutting_down_error()

    def cancel(self) -> bool:
        return bool(self._call.cancel())

    def __aiter__(self) -> AsyncIterator[engine_pb2.GenerateResponse]:
        return self._messages


class EnginePool:
    """Every engine `addr` names (see the module docstring); `start()` begins watching health
    and resolving DNS names, `close()` ends it all."""

    def __init__(
        self,
        addr: str,
        drain: Drain | None = None,
        *,
        rng: random.Random | None = None,
        resolve: Callable[[str, int], Awaitable[list[Any]]] | None = None,
        interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
    ) -> None:
        self.addresses = engine_addresses(addr)
        # Those carrying the request's trace (services.common.tracing), on every channel.
        self._interceptors = interceptors
        self.drain = drain or Drain()
        self.engines: dict[str, Engine] = {}
        self.failovers: dict[str, int] = {}
        self._rng = rng or random.Random()
        self._resolve = resolve or self._getaddrinfo
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = False
        for name, tgt in self.addresses.fixed:
            self._add(name, tgt)

    # -- membership -------------------------------------------------------------------------

    def _add(self, name: str, tgt: str) -> Engine:
        channel = grpc.aio.insecure_channel(
            tgt, options=list(ENGINE_OPTIONS), interceptors=self._interceptors
        )
        engine = Engine(name, channel)
        self.engines[name] = engine
        if self._started:
            self._watch(engine)
        log.info("engine %s added", name)
        return engine

    def _remove(self, engine: Engine) -> None:
        engine.removed = True
        self.engines.pop(engine.name, None)
        if engine.watch is not None:
            engine.watch.cancel()
        log.info("engine %s removed (%d call(s) in flight)", engine.name, engine.outstanding)
        if engine.outstanding == 0:
            self._spawn(engine.channel.close())

    async def _getaddrinfo(self, host: str, port: int) -> list[Any]:
        loop = asyncio.get_running_loop()
        return list(await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM))

    async def resolve_once(self) -> None:
        """Brings the engines in line with what the DNS name resolves to now. A failed lookup
        keeps the engines as they are (a resolver hiccup must not empty the pool)."""
        assert self.addresses.dns is not None
        host, port = self.addresses.dns
        try:
            infos = await self._resolve(host, port)
        except OSError as exc:
            log.warning("resolving engines %s:%d failed: %s", host, port, exc)
            return
        found = dict(_resolved(host, port, infos))
        if not found:
            log.warning("engines %s:%d resolve to no address", host, port)
            return
        for name in [n for n in self.engines if n not in found]:
            self._remove(self.engines[name])
        for name, tgt in found.items():
            if name not in self.engines:
                self._add(name, tgt)

    async def _resolve_loop(self) -> None:
        while True:
            await asyncio.sleep(RESOLVE_INTERVAL_S if self.engines else RESOLVE_EMPTY_INTERVAL_S)
            await self.resolve_once()

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        if self.addresses.dns is not None:
            await self.resolve_once()
            self._spawn(self._resolve_loop())
        for engine in self.engines.values():
            self._watch(engine)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for engine in self.engines.values():
            if engine.watch is not None:
                engine.watch.cancel()
        tasks = [*self._tasks, *(e.watch for e in self.engines.values() if e.watch)]
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for engine in list(self.engines.values()):
            await engine.channel.close()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- health -----------------------------------------------------------------------------

    def _watch(self, engine: Engine) -> None:
        engine.watch = asyncio.get_running_loop().create_task(
            self._watch_health(engine), name=f"engine-health {engine.name}"
        )

    async def _watch_health(self, engine: Engine) -> None:
        stub = health_pb2_grpc.HealthStub(engine.channel)
        delay = WATCH_RETRY_MIN_S
        while not engine.removed:
            try:
                async for resp in stub.Watch(health_pb2.HealthCheckRequest(service="")):
                    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
                    if status != engine.health:
                        log.info("engine %s: %s", engine.name, status)
                    engine.health = status
                    if status == SERVING:
                        engine.suspect_until = 0.0
                    delay = WATCH_RETRY_MIN_S
            except grpc.aio.AioRpcError as exc:
                if engine.health != UNREACHABLE:
                    log.warning("engine %s unreachable (%s)", engine.name, exc.code().name)
            # The watch ended (the engine stopped or the connection dropped): unknown until a
            # new watch answers.
            engine.health = UNREACHABLE
            await asyncio.sleep(delay)
            delay = min(delay * 2, WATCH_RETRY_MAX_S)

    # -- choosing ---------------------------------------------------------------------------

    def pick(self, exclude: tuple[str, ...] | list[str] = ()) -> Engine | None:
        """An engine for the next call (the power of two choices over the usable ones), not one
        of `exclude`; when none looks usable, any remaining engine, since health can lag."""
        now = time.monotonic()
        rest = [e for e in self.engines.values() if e.name not in exclude]
        candidates = [e for e in rest if e.usable(now)] or rest
        if len(candidates) <= 1:
            return candidates[0] if candidates else None
        a, b = self._rng.sample(candidates, 2)
        return a if a.outstanding <= b.outstanding else b

    def _track(self, engine: Engine, call: Any) -> None:
        engine.outstanding += 1

        def done(_: object) -> None:
            engine.outstanding -= 1
            if engine.removed and engine.outstanding == 0:
                self._spawn(engine.channel.close())

        call.add_done_callback(done)

    def _failed(self, engine: Engine, exc: grpc.aio.AioRpcError) -> None:
        code = exc.code()
        self.failovers[code.name] = self.failovers.get(code.name, 0) + 1
        if code == grpc.StatusCode.UNAVAILABLE:
            engine.suspect_until = time.monotonic() + SUSPECT_S
        log.info("engine %s: %s before any output; trying another", engine.name, code.name)

    def attempts(self) -> Iterator[Engine]:
        """Engines for one call, in the order to try them (at most `MAX_ATTEMPTS`)."""
        tried: list[str] = []
        while len(tried) < MAX_ATTEMPTS:
            engine = self.pick(tried)
            if engine is None:
                return
            tried.append(engine.name)
            yield engine

    async def generate(
        self, request: engine_pb2.GenerateRequest, timeout_s: float
    ) -> tuple[EngineStream, engine_pb2.GenerateResponse]:
        """Opens `Generate` on an engine and returns the call with its first message, failing
        over before it (see the module docstring). Raises the last engine's `AioRpcError` (or
        UNAVAILABLE when there is no engine), or StopAsyncIteration for an empty stream."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        failure: grpc.aio.AioRpcError | None = None
        for engine in self.attempts():
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            call = engine.stub.Generate(request, timeout=remaining)
            self._track(engine, call)
            messages = aiter(call)
            try:
                first = await anext(messages)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in FAILOVER_CODES:
                    raise
                failure = exc
                self._failed(engine, exc)
                continue
            except BaseException:
                call.cancel()
                raise
            return EngineStream(call, messages, self.drain), first
        raise failure if failure is not None else no_engine_error()

    async def unary(
        self,
        method: Callable[[engine_pb2_grpc.EngineServiceStub], Callable[..., Awaitable[T]]],
        request: Any,
        timeout_s: float,
    ) -> T:
        """A unary call (`lambda stub: stub.ResolveModel`, ...) on any healthy engine, failing
        over on UNAVAILABLE."""
        failure: grpc.aio.AioRpcError | None = None
        for engine in self.attempts():
            try:
                return await method(engine.stub)(request, timeout=timeout_s)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                failure = exc
                self._failed(engine, exc)
        raise failure if failure is not None else no_engine_error()

    def states(self) -> dict[str, dict[str, Any]]:
        """Per engine: its health and this edge's calls in flight (for /readyz)."""
        now = time.monotonic()
        return {
            e.name: {"health": e.health, "outstanding": e.outstanding, "usable": e.usable(now)}
            for e in sorted(self.engines.values(), key=lambda e: e.name)
        }

    def any_usable(self) -> bool:
        now = time.monotonic()
        return any(e.usable(now) for e in self.engines.values())


class EnginePoolCollector(Collector):
    """Per-engine gauges for /metrics, read from the pool at scrape time."""

    def __init__(self, pool: EnginePool) -> None:
        self.pool = pool

    def collect(self) -> Iterator[Any]:
        outstanding = GaugeMetricFamily(
            "sluice_engine_outstanding_requests",
            "Generate calls this edge has in flight, per engine.",
            labels=["engine"],
        )
        up = GaugeMetricFamily(
            "sluice_engine_up",
            "1 when this edge sends new requests to the engine (its health watch says SERVING).",
            labels=["engine"],
        )
        now = time.monotonic()
        for engine in self.pool.engines.values():
            outstanding.add_metric([engine.name], engine.outstanding)
            up.add_metric([engine.name], 1.0 if engine.usable(now) else 0.0)
        failovers = CounterMetricFamily(
            "sluice_engine_failovers",
            "Engine calls that failed before any output and went to another engine, by status.",
            labels=["code"],
        )
        for code, count in sorted(self.pool.failovers.items()):
            failovers.add_metric([code], count)
        yield outstanding
        yield up
        yield failovers
