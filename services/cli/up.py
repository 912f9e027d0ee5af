"""`sluice up`: the whole stack on one machine, four processes on loopback.

Starts auth, metering, engine and edge as separate processes (the same commands compose runs),
waits until each is healthy, creates a dev organization and key on the first start, and on Ctrl-C
or SIGTERM stops them one at a time, waiting for each to drain: the edge first (its streams
finish and settle while everything behind it still runs), metering last (every settlement has
somewhere to go).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from typing import Any

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.channels import aio_channel
from services.common.settings import Settings
from services.pb.auth.v1 import auth_pb2, auth_pb2_grpc

SERVICES = ("auth", "metering", "engine", "edge")
# The order of stopping: callers before what they call, metering (settlements) last.
STOP_ORDER = ("edge", "engine", "auth", "metering")
READY_TIMEOUT_S = 180.0
# Beyond the drain itself (SLUICE_DRAIN_DELAY_S + SLUICE_DRAIN_GRACE_S), time to exit.
STOP_MARGIN_S = 10.0


def register(sub: Any) -> None:
    parser = sub.add_parser("up", help="run the whole stack locally until Ctrl-C")
    parser.add_argument(
        "--no-dev-key", action="store_true", help="do not create a dev key on first start"
    )
    parser.set_defaults(func=run)


def _grpc_addr(settings: Settings, name: str) -> str:
    addr: str = getattr(settings, f"{name}_addr")
    return addr


async def _wait_grpc(addr: str, deadline: float) -> bool:
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                resp = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.2)
    return False


async def _wait_http(url: str, deadline: float) -> bool:
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get(url, timeout=1.0)).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    return False


async def _create_dev_key(settings: Settings) -> str:
    async with aio_channel(settings.auth_addr) as channel:
        resp = await auth_pb2_grpc.AuthServiceStub(channel).CreateKey(
            auth_pb2.CreateKeyRequest(org="dev", name="dev"), timeout=10.0
        )
    secret: str = resp.secret
    return secret


def _ensure_model(settings: Settings) -> None:
    from services.engine.registry import CPU_VARIANTS, choose_variant

    model_dir = settings.models_dir / "smollm2-135m-instruct"
    if choose_variant(model_dir, settings.model_variant, cuda_available=False) is None and (
        settings.model_variant in ("auto", *CPU_VARIANTS)
    ):
        print("sluice: no exported model yet; exporting (one time, a few minutes)", flush=True)
        from services.engine.export import export_model

        export_model(CPU_VARIANTS[0], settings.models_dir)


def _stop(procs: dict[str, subprocess.Popen[bytes]], timeout_s: float) -> None:
    """SIGTERM to each service in `STOP_ORDER`, waiting up to `timeout_s` for it to exit (then
    SIGKILL) before the next: the edge drains while the services behind it still run."""
    for name in STOP_ORDER:
        proc = procs.get(name)
        if proc is None or proc.poll() is not None:
            continue
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            print(f"sluice: {name} did not stop in {timeout_s:.0f}s; killing it", flush=True)
            proc.kill()
            proc.wait()


def run(args: argparse.Namespace, settings: Settings) -> int:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    _ensure_model(settings)
    # Resolve the secrets once here so the services never race to create them.
    settings.resolved_key_secret()
    settings.resolved_admin_token()

    stop_requested = False

    def _on_signal(signum: int, _frame: Any) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name in SERVICES:
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", f"services.{name}"],
                env=os.environ.copy(),
                # Own process group: a Ctrl-C in the terminal reaches only `sluice up`, which
                # then stops the services in order.
                start_new_session=True,
            )
            deadline = time.monotonic() + READY_TIMEOUT_S
            if name == "edge":
                url = f"http://{settings.edge_host}:{settings.edge_port}/healthz"
                ok = asyncio.run(_wait_http(url, deadline))
            else:
                ok = asyncio.run(_wait_grpc(_grpc_addr(settings, name), deadline))
            if not ok or procs[name].poll() is not None:
                print(f"sluice: {name} did not become ready", file=sys.stderr, flush=True)
                return 1
            if stop_requested:
                return 130

        base = f"http://{settings.edge_host}:{settings.edge_port}/v1"
        print(f"sluice: ready at {base}", flush=True)
        token_from = (
            "SLUICE_ADMIN_TOKEN" if settings.admin_token else settings.data_dir / "admin_token"
        )
        print(f"sluice: admin API at {base.removesuffix('/v1')}/admin/v1 (token: {token_from})")
        marker = settings.data_dir / "dev_key_created"
        if not args.no_dev_key and not marker.exists():
            key = asyncio.run(_create_dev_key(settings))
            marker.write_text("dev key created; it is shown once and never stored\n")
            print("sluice: created organization 'dev' with this API key (shown once):", flush=True)
            print(key, flush=True)
        else:
            print(
                "sluice: create an API key with `sluice keys create --org ORG --name NAME`",
                flush=True,
            )

        while not stop_requested:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    print(
                        f"sluice: {name} exited with {proc.returncode}; stopping",
                        file=sys.stderr,
                        flush=True,
                    )
                    return 1
            time.sleep(0.5)
        return 0
    finally:
        print("sluice: stopping", flush=True)
        _stop(procs, settings.drain_delay_s + settings.drain_grace_s + STOP_MARGIN_S)
