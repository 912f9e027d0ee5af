"""The services as separate processes that a test can stop, kill -9 and restart one by one.

`sluice up` supervises its four children and stops them all when one dies, which is right for a
developer and wrong for tests of what happens when one service dies: those start each service
with the same command (`python -m services.<name>`) and environment that `sluice up` uses, plus
any number of named replicas of any service ("edge-b", "metering-b", ...), each on a port of its
own, which the edges (and the CLI) then reach through the multi-address settings.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench import stack as launcher

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 180.0
ADMIN_TOKEN = "sluice-admin-test-token"
SERVICES = ("auth", "metering", "engine", "edge")


def module_of(name: str) -> str:
    """The service a process name runs: "metering-b" runs `services.metering`."""
    module = name.split("-", 1)[0]
    if module not in SERVICES:
        raise ValueError(f"{name!r} names no service")
    return module


@dataclass
class Edge:
    name: str
    host: str
    port: int

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    @property
    def admin_url(self) -> str:
        return self.base_url.removesuffix("/v1") + "/admin/v1"


@dataclass
class Services:
    """auth, metering and engine plus named edges and replicas, each its own process with its own
    log file."""

    tmp: Path
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # The environment each process was first started with beyond `env` (its own port), so that
    # a restart comes back at the same address.
    own_env: dict[str, dict[str, str]] = field(default_factory=dict)
    edges: dict[str, Edge] = field(default_factory=dict)
    fakes: dict[str, str] = field(default_factory=dict)  # provider -> control base URL

    @classmethod
    def create(
        cls, tmp: Path, database_url: str, extra_env: Mapping[str, str] | None = None
    ) -> Services:
        ports = {name: launcher.free_port() for name in ("auth", "metering", "engine", "edge")}
        env = launcher.stack_env(tmp, ports, 8, database_url, extra_env)
        env.setdefault("SLUICE_ADMIN_TOKEN", ADMIN_TOKEN)
        return cls(tmp=tmp, env=env)

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self) -> str:
        return "".join(self.log(name) for name in self.procs)

    def start(self, name: str, **env: str) -> None:
        """Starts `python -m services.<module>` for `name` ("edge", "edge-b", "metering-b", ...;
        see `module_of`) and waits until it is ready; a restart keeps its first address."""
        module = module_of(name)
        own = self.own_env.setdefault(name, {})
        own.update(env)
        proc_env = {**self.env, **own}
        with open(self.tmp / f"{name}.log", "ab") as out:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", f"services.{module}"],
                env=proc_env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        if module == "edge":
            edge = Edge(name, proc_env["SLUICE_EDGE_HOST"], int(proc_env["SLUICE_EDGE_PORT"]))
            self.edges[name] = edge
            self._wait(name, lambda: _http_ok(edge.base_url.removesuffix("/v1") + "/healthz"))
        else:
            addr = proc_env[f"SLUICE_{module.upper()}_ADDR"]
            self._wait(name, lambda: _grpc_serving(addr))

    def start_fakes(self) -> None:
        """The OpenAI and Anthropic stand-ins (tests.fakes), pointed at by the engine's settings."""
        for name, module, var, suffix in (
            ("fake-openai", "openai_upstream", "SLUICE_OPENAI_BASE_URL", "/v1"),
            ("fake-anthropic", "anthropic_upstream", "SLUICE_ANTHROPIC_BASE_URL", ""),
        ):
            port = launcher.free_port()
            with open(self.tmp / f"{name}.log", "ab") as out:
                self.procs[name] = subprocess.Popen(
                    [sys.executable, "-m", f"tests.fakes.{module}", "--port", str(port)],
                    env=self.env,
                    cwd=ROOT,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            url = f"http://127.0.0.1:{port}"
            self.fakes[name.removeprefix("fake-")] = url
            self.env[var] = url + suffix
            self._wait(name, lambda url=url: _http_ok(url + "/_control/script"))

    def start_all(
        self, edges: Mapping[str, str] = {"edge": "127.0.0.1"}, replicas: Mapping[str, int] = {}
    ) -> None:
        """auth, metering and engine (`replicas[name]` of each, default one), then the edges,
        pointed at every replica through the comma-separated address settings."""
        for name in ("auth", "metering", "engine"):
            var = f"SLUICE_{name.upper()}_ADDR"
            addrs = [self.env[var]]
            addrs += [f"127.0.0.1:{launcher.free_port()}" for _ in range(replicas.get(name, 1) - 1)]
            for i, addr in enumerate(addrs):
                self.start(name if i == 0 else f"{name}-{chr(ord('a') + i)}", **{var: addr})
            self.env[var] = ",".join(addrs)
        for i, (name, host) in enumerate(edges.items()):
            port = self.env["SLUICE_EDGE_PORT"] if i == 0 else str(launcher.free_port())
            self.start(name, SLUICE_EDGE_HOST=host, SLUICE_EDGE_PORT=port)

    def _wait(self, name: str, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        proc = self.procs[name]
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log(name)}")
            if ready():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{name} did not become ready:\n{self.log(name)}")

    def wait_ready(self, edge: str) -> None:
        """Until the edge's /readyz sees auth, metering and engine serving again."""
        url = self.edges[edge].base_url.removesuffix("/v1") + "/readyz"
        self._wait(edge, lambda: _http_ok(url))

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        """Stops one service (SIGKILL for a crash) and waits for it to be gone."""
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self) -> None:
        for name in reversed(list(self.procs)):
            self.stop(name)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_cli(self.env, *args, check=check)

    def new_key(self, org: str, name: str = "test", *options: str) -> str:
        return create_key(self.env, org, name, *options)

    def ledger(self, org: str) -> list[dict[str, Any]]:
        """The organization's usage records, newest first, as `sluice usage --format json`."""
        out = self.cli("usage", "--org", org, "--format", "json", "--limit", "1000").stdout
        rows: list[dict[str, Any]] = json.loads(out)
        return rows


def run_cli(
    env: Mapping[str, str], *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """`sluice ARGS...` against the services that `env` points at."""
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=check,
        timeout=60,
    )


def create_key(env: Mapping[str, str], org: str, name: str, *options: str) -> str:
    """`sluice keys create` with options; returns the secret (the last line of stdout)."""
    out = run_cli(env, "keys", "create", "--org", org, "--name", name, *options).stdout
    return out.strip().splitlines()[-1]


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def _grpc_serving(addr: str) -> bool:
    with grpc.insecure_channel(addr) as channel:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=1.0
            )
        except grpc.RpcError:
            return False
    return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)


def pg_env_url() -> str:
    """The DSN of the test PostgreSQL server (see tests/conftest.py)."""
    from tests.conftest import DEFAULT_PG_DSN

    return os.environ.get("SLUICE_TEST_PG_DSN", DEFAULT_PG_DSN)
