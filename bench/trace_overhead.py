"""What tracing costs a request: off (the default) and on, exporting OTLP/HTTP to a loopback
receiver, measured side by side.

`python -m bench.trace_overhead` runs two loops:

- in process: one span (`Tracing.span`), a unary gRPC round trip and a 16-message server stream
  over loopback with the tracing interceptors and without; each variant alternates with its peer
  in rounds, so that drift on a shared machine hits both alike;
- `--stack`: two whole stacks side by side (`sluice up`, one with `OTEL_*` set), the same tiny
  hosted request (one output token) sent to each in turn: the medians of their latencies, and
  the CPU time each service spent per request (from /proc), which is steadier on a shared
  machine than latency.

The receiver answers every export at once and keeps nothing; with tracing on, the batch
processor's worker thread encodes and posts the spans in the measured process, so its share of
the GIL is in the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import httpx

from bench import stack as launcher
from bench.config import GATEWAY_PROMPT, MODEL, ROOT
from services.common.channels import aio_channel
from services.common.grpc_server import start_server
from services.common.tracing import Tracing

ROUNDS = 20


@contextmanager
def receiver() -> Iterator[str]:
    """An OTLP/HTTP endpoint that accepts and drops every export."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def tracing_to(endpoint: str, service: str) -> Tracing:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporter = OTLPSpanExporter(endpoint=endpoint + "/v1/traces")
    return Tracing.with_processors(service, [BatchSpanProcessor(exporter)])


def per_call_us(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1e6:8.1f} µs"


async def _compare(
    name: str, off: Callable[[], Awaitable[None]], on: Callable[[], Awaitable[None]], n: int
) -> None:
    times: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(ROUNDS):
        for label, fn in (("off", off), ("on", on)):
            start = time.perf_counter()
            for _ in range(n):
                await fn()
            times[label].append((time.perf_counter() - start) / n)
    off_s, on_s = statistics.median(times["off"]), statistics.median(times["on"])
    print(
        f"{name:<38} off {per_call_us(times['off'])}   on {per_call_us(times['on'])}"
        f"   {(on_s - off_s) * 1e6:+6.1f} µs"
    )


async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


async def count(request: bytes, context: grpc.aio.ServicerContext) -> object:
    for i in range(16):
        yield bytes([i])


def _register(server: grpc.aio.Server) -> None:
    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(echo),
        "Count": grpc.unary_stream_rpc_method_handler(count),
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("bench.Bench", handlers),)
    )


async def in_process(endpoint: str) -> None:
    off = Tracing()
    on_client, on_server = tracing_to(endpoint, "edge"), tracing_to(endpoint, "auth")

    async def span_off() -> None:
        with off.span("authenticate"):
            pass

    async def span_on() -> None:
        with on_client.span("authenticate"):
            pass

    await _compare("one span", span_off, span_on, 100)

    plain = await start_server("127.0.0.1:0", _register, ["bench.Bench"])
    traced = await start_server("127.0.0.1:0", _register, ["bench.Bench"], on_server)
    async with (
        aio_channel(f"127.0.0.1:{plain.port}") as plain_ch,
        aio_channel(
            f"127.0.0.1:{traced.port}", interceptors=on_client.client_interceptors()
        ) as traced_ch,
    ):
        plain_echo = plain_ch.unary_unary("/bench.Bench/Echo")
        traced_echo = traced_ch.unary_unary("/bench.Bench/Echo")
        plain_count = plain_ch.unary_stream("/bench.Bench/Count")
        traced_count = traced_ch.unary_stream("/bench.Bench/Count")

        async def unary_off() -> None:
            await plain_echo(b"x", timeout=5)

        async def unary_on() -> None:
            await traced_echo(b"x", timeout=5)

        async def stream_off() -> None:
            async for _ in plain_count(b"", timeout=5):
                pass

        async def stream_on() -> None:
            async for _ in traced_count(b"", timeout=5):
                pass

        await _compare("unary gRPC call (client + server span)", unary_off, unary_on, 200)
        await _compare("16-message gRPC stream (both spans)", stream_off, stream_on, 100)
    await plain.server.stop(0)
    await traced.server.stop(0)
    on_client.shutdown()
    on_server.shutdown()


def _services(run: launcher.Stack) -> dict[str, int]:
    """The pids of a stack's four services (the children of `sluice up`), by service."""
    pid = run.proc.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    out = {}
    for child in children:
        argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        module = next((a.decode() for a in argv if a.startswith(b"services.")), "")
        out[module.removeprefix("services.")] = int(child)
    return out


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stacks(endpoint: str, n: int, baseline: Path | None = None) -> None:
    """Tracing off against on; or, with `baseline` (another checkout), that checkout against
    this one, both off: what the hooks cost when tracing is off."""
    # One ONNX Runtime thread that sleeps when idle, in both stacks: the engines' own CPU
    # would otherwise drown the gateway's.
    quiet = {"SLUICE_ENGINE_THREADS": "1", "SLUICE_ENGINE_ALLOW_SPINNING": "false"}
    # The batch processor's own schedule (an export every 5 s, or per 512 spans), as deployed.
    traced = {**quiet, "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": GATEWAY_PROMPT}],
        "max_tokens": 1,
        "temperature": 0,
    }
    with tempfile.TemporaryDirectory() as tmp:
        if baseline is None:
            runs = {
                "off": launcher.start_stack(Path(tmp) / "off", max_batch=4, extra_env=quiet),
                "on": launcher.start_stack(Path(tmp) / "on", max_batch=4, extra_env=traced),
            }
        else:
            # "off" is the other checkout, "on" this one with tracing off.
            runs = {
                "off": launcher.start_stack(
                    Path(tmp) / "base", max_batch=4, extra_env=quiet, root=baseline
                ),
                "on": launcher.start_stack(Path(tmp) / "this", max_batch=4, extra_env=quiet),
            }
        try:
            pids = {label: _services(run) for label, run in runs.items()}
            clients = {
                label: httpx.Client(
                    base_url=run.base_url,
                    headers={"authorization": f"Bearer {run.key}"},
                    timeout=60,
                )
                for label, run in runs.items()
            }
            times: dict[str, list[float]] = {"off": [], "on": []}
            cpu: dict[str, dict[str, float]] = {}
            for i in range(n + 10):
                if i == 10:  # the first ones warm caches and connections
                    cpu = {
                        label: {svc: -_cpu_s(pid) for svc, pid in pids[label].items()}
                        for label in runs
                    }
                order = ("off", "on") if i % 2 == 0 else ("on", "off")
                for label in order:
                    start = time.perf_counter()
                    resp = clients[label].post("/chat/completions", json=body)
                    elapsed = time.perf_counter() - start
                    if resp.status_code != 200:
                        raise RuntimeError(f"{label}: HTTP {resp.status_code}: {resp.text[:300]}")
                    if i >= 10:
                        times[label].append(elapsed)
            time.sleep(6.0)  # the last batches of spans are exported, and counted
            for label in runs:
                for svc, pid in pids[label].items():
                    cpu[label][svc] += _cpu_s(pid)
            for client in clients.values():
                client.close()
        finally:
            for run in runs.values():
                launcher.stop_stack(run)
    a, b = ("off", "on") if baseline is None else ("baseline", "this")
    if baseline is not None:
        print(f"baseline: {baseline}; this: {ROOT}; tracing off in both")
    off_ms = statistics.median(times["off"]) * 1e3
    on_ms = statistics.median(times["on"]) * 1e3
    print(
        f"hosted chat, 1 token, through the stack: latency {a} {off_ms:7.2f} ms   "
        f"{b} {on_ms:7.2f} ms   {on_ms - off_ms:+5.2f} ms (median of {n} each, interleaved)"
    )
    for svc in ("edge", "auth", "metering", "engine"):
        off_cpu = cpu["off"].get(svc, 0.0) / n * 1e3
        on_cpu = cpu["on"].get(svc, 0.0) / n * 1e3
        print(
            f"  CPU per request in {svc:<8} {a} {off_cpu:6.2f} ms   {b} {on_cpu:6.2f} ms"
            f"   {on_cpu - off_cpu:+5.2f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack", action="store_true", help="also compare two whole stacks")
    parser.add_argument("--requests", type=int, default=200, help="requests per stack")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="with --stack: another checkout (e.g. a worktree of main) to compare this one "
        "against, both with tracing off",
    )
    args = parser.parse_args()
    with receiver() as endpoint:
        asyncio.run(in_process(endpoint))
        if args.stack:
            stacks(endpoint, args.requests, args.baseline)


if __name__ == "__main__":
    main()
