"""Checks compose.yaml, compose.gpu.yaml and the Dockerfile without a Docker engine.

They must run what `sluice up` runs, with configuration the services actually read, and build the
stubs the way the Makefile does; `docker compose config` runs too where the client is installed.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.cli.up import SERVICES
from services.common.channels import target
from services.common.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose.yaml"
GPU_OVERLAY = ROOT / "compose.gpu.yaml"
DOCKERFILE = ROOT / "Dockerfile"
GRPC_PORTS = {"auth": 50051, "metering": 50052, "engine": 50053}
# REPLICAS_*: compose's own knobs (how many of a service), not the services' settings.
ENV_PREFIXES = ("SLUICE_", "POSTGRES_", "REPLICAS_")
SETTINGS_ENV = {f"SLUICE_{name.upper()}" for name in Settings.model_fields}


def _load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path.name} is not a mapping"
    return data


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _load(COMPOSE)


@pytest.fixture(scope="module")
def gpu() -> dict[str, Any]:
    return _load(GPU_OVERLAY)


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: str(value) for key, value in env.items()}


def _instructions(text: str) -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined."""
    joined: list[str] = []
    current = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        joined.append(current + line)
        current = ""
    result = []
    for line in joined:
        keyword, _, rest = line.strip().partition(" ")
        result.append((keyword.upper(), " ".join(rest.split())))
    return result


def _stages(text: str) -> dict[str, list[tuple[str, str]]]:
    stages: dict[str, list[tuple[str, str]]] = {}
    name = ""
    for keyword, args in _instructions(text):
        if keyword == "FROM":
            match = re.search(r"\bAS\s+(\S+)$", args, re.IGNORECASE)
            assert match, f"every stage is named: FROM {args}"
            name = match.group(1)
            stages[name] = []
        elif name:
            stages[name].append((keyword, args))
    return stages


def _makefile_stub_commands() -> list[str]:
    """The protoc and find lines of the Makefile's stub rule, with its variables expanded."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("services/pb/.generated:"))
    recipe: list[str] = []
    current = ""
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        if line.endswith("\\"):
            current += line[1:-1] + " "
            continue
        recipe.append(current + line[1:])
        current = ""
    wanted = [cmd for cmd in recipe if "grpc_tools.protoc" in cmd or cmd.startswith("find ")]
    assert len(wanted) == 2, recipe
    expanded = (
        cmd.replace("$(PY)", "python").replace("$(PROTOS)", "protos/*/v1/*.proto") for cmd in wanted
    )
    return [" ".join(cmd.split()) for cmd in expanded]


def test_has_postgres_redis_and_the_four_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "redis", *SERVICES} <= set(services)
    extras = set(services) - {"postgres", "redis", *SERVICES}
    for name in extras:
        assert services[name].get("profiles"), f"{name} would start with `up`: give it a profile"


@pytest.mark.parametrize("path", [COMPOSE, GPU_OVERLAY], ids=lambda p: p.name)
def test_builds_point_at_an_existing_dockerfile(path: Path) -> None:
    for name, service in _load(path)["services"].items():
        build = service.get("build")
        if build is None:
            continue
        if isinstance(build, str):
            build = {"context": build}
        context = ROOT / build.get("context", ".")
        assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
        assert build.get("target", "runtime") == "runtime", name


def test_commands_are_those_of_sluice_up(compose: dict[str, Any]) -> None:
    for name in SERVICES:
        service = compose["services"][name]
        assert service["command"] == ["python", "-m", f"services.{name}"]
        assert "build" in service and "entrypoint" not in service, name


def test_gpu_overlay_reserves_nvidia_gpus_for_the_engine_only(gpu: dict[str, Any]) -> None:
    assert set(gpu["services"]) == {"engine"}
    engine = gpu["services"]["engine"]
    devices = engine["deploy"]["resources"]["reservations"]["devices"]
    assert {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]} in devices
    args = engine["build"]["args"]
    declared = {
        args_.split("=")[0] for kw, args_ in _instructions(DOCKERFILE.read_text()) if kw == "ARG"
    }
    assert set(args) <= declared
    assert args["ONNXRUNTIME"].startswith("onnxruntime-gpu")


def test_environment_names_are_settings_fields(
    compose: dict[str, Any], gpu: dict[str, Any]
) -> None:
    names: set[str] = set()
    for doc in (compose, gpu):
        for service in doc["services"].values():
            names |= set(_environment(service))
    for path in (COMPOSE, GPU_OVERLAY):
        names |= set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", path.read_text()))
    assert names
    assert all(name.startswith(ENV_PREFIXES) for name in names), sorted(names)
    for keyword, args in _instructions(DOCKERFILE.read_text()):
        if keyword == "ENV":
            names |= {m for m in re.findall(r"(\w+)=", args) if m.startswith("SLUICE_")}
    unknown = {name for name in names if name.startswith("SLUICE_")} - SETTINGS_ENV
    assert not unknown, f"not fields of Settings: {sorted(unknown)}"


def test_grpc_addresses_line_up(compose: dict[str, Any]) -> None:
    services = compose["services"]
    edge = _environment(services["edge"])
    for name, port in GRPC_PORTS.items():
        var = f"SLUICE_{name.upper()}_ADDR"
        assert _environment(services[name])[var] == f"0.0.0.0:{port}"
        # Through Docker's DNS, which names every replica of the service.
        assert edge[var] == f"dns:///{name}:{port}"
        assert target(edge[var]) == edge[var]
    for caller, callee in (("cli", "auth"), ("cli", "metering")):
        var = f"SLUICE_{callee.upper()}_ADDR"
        assert _environment(services[caller])[var] == f"dns:///{callee}:{GRPC_PORTS[callee]}"
    for name in ("auth", "metering"):
        url = _environment(services[name])["SLUICE_DATABASE_URL"]
        assert url == "postgresql+asyncpg://sluice:sluice@postgres:5432/sluice"
    postgres = _environment(services["postgres"])
    assert (postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"], postgres["POSTGRES_DB"]) == (
        "sluice",
        "sluice",
        "sluice",
    )


def test_ports_healthchecks_and_startup_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    edge = services["edge"]
    assert _environment(edge)["SLUICE_EDGE_HOST"] == "0.0.0.0"
    assert edge["ports"] == ["127.0.0.1:8000:8000"]
    for name in ("postgres", "redis", *SERVICES):
        assert services[name]["healthcheck"]["test"], name
    for name, service in services.items():
        if name not in ("edge", "edge-b"):
            assert "ports" not in service, f"{name} is published; only the edges should be"
        for dep, spec in (service.get("depends_on") or {}).items():
            assert spec["condition"] == "service_healthy", (name, dep)
            assert "healthcheck" in services[dep], (name, dep)
    assert set(edge["depends_on"]) == {"auth", "metering", "engine"}
    for name in ("auth", "metering"):
        assert "postgres" in services[name]["depends_on"]
    assert "redis" in services["metering"]["depends_on"]


def test_metering_shares_redis_and_replicas_are_possible(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert _environment(services["metering"])["SLUICE_REDIS_URL"] == "redis://redis:6379/0"
    assert services["redis"]["image"].startswith("redis:")
    for name in ("metering", "engine"):
        replicas = services[name]["deploy"]["replicas"]
        assert replicas == f"${{REPLICAS_{name.upper()}:-1}}", name
    # The second edge is the first one on another host port, started with its profile only.
    edge, second = services["edge"], services["edge-b"]
    assert second["profiles"] == ["replicas"]
    assert second["ports"] == ["127.0.0.1:8001:8000"]
    for key in ("command", "environment", "depends_on", "healthcheck", "build"):
        assert second[key] == edge[key], key


def test_engine_mounts_the_models_read_only(compose: dict[str, Any]) -> None:
    assert "./models:/app/models:ro" in compose["services"]["engine"]["volumes"]
    env = [args for kw, args in _instructions(DOCKERFILE.read_text()) if kw == "ENV"]
    assert any("SLUICE_MODELS_DIR=/app/models" in args for args in env)


def test_dockerfile_generates_stubs_as_the_makefile_does() -> None:
    runs = [args for kw, args in _instructions(DOCKERFILE.read_text()) if kw == "RUN"]
    for command in _makefile_stub_commands():
        assert any(command in run for run in runs), command


def test_dockerfile_runtime_stage() -> None:
    text = DOCKERFILE.read_text()
    stages = _stages(text)
    # The last stage is what `build: .` and a plain `docker build .` produce.
    assert list(stages)[-1] == "runtime"
    assert "exporter" in stages and "models" in stages
    froms = [args for kw, args in _instructions(text) if kw == "FROM"]
    assert any("python:3.11-slim" in args for kw, args in _instructions(text) if kw == "ARG")
    assert all(a.startswith(("${PYTHON_IMAGE}", "scratch")) for a in froms), froms
    runtime = stages["runtime"]
    runs = " ".join(args for kw, args in runtime if kw == "RUN")
    assert "pip install ." in runs and "[export]" not in runs
    assert "CMD" not in {kw for kw, _ in runtime}
    users = [args for kw, args in runtime if kw == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert any("[export]" in args for kw, args in stages["exporter"] if kw == "RUN")
    assert any("services.cli model export" in args for kw, args in stages["exporter"])


def test_dockerignore_keeps_local_state_out() -> None:
    entries = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", "var", "models/.cache", ".git", "**/__pycache__"} <= entries


# --- the healthcheck one-liners, run against stand-in servers ----------------------------------


def _python_snippet(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"], test
    return str(test[3])


def _run_snippet(code: str) -> int:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30).returncode


@pytest.fixture
def health_server() -> Iterator[tuple[int, health.HealthServicer]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port, servicer
    finally:
        server.stop(None).wait()


def test_grpc_healthchecks_follow_serving_status(
    compose: dict[str, Any], health_server: tuple[int, health.HealthServicer]
) -> None:
    port, servicer = health_server
    for name, own_port in GRPC_PORTS.items():
        code = _python_snippet(compose["services"][name])
        assert f"'127.0.0.1:{own_port}'" in code, name
        code = code.replace(f"'127.0.0.1:{own_port}'", f"'127.0.0.1:{port}'")
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        assert _run_snippet(code) == 0, name
        servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert _run_snippet(code) != 0, name


class _Healthz(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_edge_healthcheck_follows_healthz(compose: dict[str, Any]) -> None:
    code = _python_snippet(compose["services"]["edge"])
    assert "'http://127.0.0.1:8000/healthz'" in code
    server = HTTPServer(("127.0.0.1", 0), _Healthz)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        code = code.replace(":8000/", f":{server.server_port}/")
        _Healthz.status = 200
        assert _run_snippet(code) == 0
        _Healthz.status = 503
        assert _run_snippet(code) != 0
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# --- the real validator, where the client is installed ------------------------------------------


def _docker_compose() -> list[str]:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("docker client not installed")
    version = subprocess.run(
        [docker, "compose", "version"], capture_output=True, text=True, timeout=60
    )
    if version.returncode != 0:
        pytest.skip("the docker compose plugin is not installed")
    return [docker, "compose"]


@pytest.mark.parametrize(
    "files", [["compose.yaml"], ["compose.yaml", "compose.gpu.yaml"]], ids=["base", "gpu"]
)
def test_docker_compose_config_validates(files: list[str]) -> None:
    cmd = _docker_compose()
    for name in files:
        cmd += ["-f", name]
    cmd += ["--profile", "tools", "--profile", "replicas", "config", "-q"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{shlex.join(cmd)}: {result.stderr}"


def test_provider_calls_belong_to_the_edge(compose: dict[str, Any]) -> None:
    services = compose["services"]
    edge = _environment(services["edge"])
    assert edge["SLUICE_OPENAI_BASE_URL"] and edge["SLUICE_ANTHROPIC_BASE_URL"]
    assert edge["SLUICE_AUTH_ADDR"] == "dns:///auth:50051"
    engine = _environment(services["engine"])
    assert not any(name.startswith(("SLUICE_OPENAI", "SLUICE_ANTHROPIC")) for name in engine)
    assert "SLUICE_AUTH_ADDR" not in engine  # the engine needs no provider credential
