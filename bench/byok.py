"""The bring-your-own-key gateway before and after the provider backends moved from the engine
into the edge: the same non-streaming chat call to `openai/gpt-4o-mini`, against a stand-in
OpenAI upstream that answers at once, through this checkout's stack, through a stack of the last
commit before the move (checked out into a git worktree), and straight to the stand-in —
interleaved at concurrency 1, each call's order rotating so that drift hits all three alike.

Before the move a BYOK request went edge -> engine (gRPC) -> provider, parsed and re-encoded in
each; after it, edge -> provider. The added latency of each stack is its percentile minus the
direct call's (`bench.metrics.gateway_summary`).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench.config import ROOT
from bench.metrics import gateway_summary
from bench.stack import Stack, free_port, start_stack, stop_stack

# The last commit whose engine held the provider backends.
BEFORE_COMMIT = "4d4e89f401782e891513d6303465dbab1c70a4a3"
MODEL = "openai/gpt-4o-mini"
PROVIDER_KEY = "sk-proj-bench0123456789abcdefghijklmnop"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 5}
CALL_TIMEOUT_S = 30.0


def _run(args: list[str], cwd: Path) -> None:
    subprocess.run(args, cwd=cwd, check=True, capture_output=True, text=True, timeout=300)


@contextmanager
def before_checkout(tmp: Path) -> Iterator[Path | str]:
    """A worktree of BEFORE_COMMIT with its stubs generated and the model linked, or the reason
    there is none (e.g. a shallow clone without that commit)."""
    where = tmp / "before"
    try:
        _run(["git", "worktree", "add", "--detach", str(where), BEFORE_COMMIT], ROOT)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        yield f"no checkout of {BEFORE_COMMIT[:10]}: {detail.strip()[:200]}"
        return
    try:
        protos = sorted(str(p.relative_to(where)) for p in where.glob("protos/*/v1/*.proto"))
        _run(
            [sys.executable, "-m", "grpc_tools.protoc", "-Iservices/pb=protos", "--python_out=.",
             "--pyi_out=.", "--grpc_python_out=.", *protos],
            where,
        )  # fmt: skip
        for folder in (where / "services" / "pb").rglob("*"):
            if folder.is_dir():
                (folder / "__init__.py").touch()
        (where / "services" / "pb" / "__init__.py").touch()
        (where / "models").symlink_to(ROOT / "models")
        yield where
    finally:
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(where)], cwd=ROOT, capture_output=True
        )
        shutil.rmtree(where, ignore_errors=True)


@contextmanager
def stand_in() -> Iterator[str]:
    """The loopback OpenAI stand-in as its own process; yields its base URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.openai_upstream", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/_control/script", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise RuntimeError("the OpenAI stand-in did not start")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _with_credential(stack: Stack, root: Path) -> str:
    """The dev organization gets an OpenAI credential; returns the dev key."""
    subprocess.run(
        [sys.executable, "-m", "services.cli", "providers", "add", "--org", "dev",
         "--provider", "openai", "--api-key", PROVIDER_KEY],
        cwd=root, env=stack.env, check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return stack.key


def _caller(client: httpx.Client, url: str, body: dict[str, Any]) -> Callable[[], float]:
    def call() -> float:
        start = time.perf_counter()
        resp = client.post(url, json=body)
        elapsed = (time.perf_counter() - start) * 1e3
        if resp.status_code != 200:
            raise RuntimeError(f"HTTP {resp.status_code} from {url}: {resp.text[:300]}")
        return elapsed

    return call


def measure(tmp: Path, samples: int, warmup: int) -> dict[str, Any]:
    """Interleaved calls through both stacks and straight to the stand-in; latencies in ms."""
    with ExitStack() as scope:
        upstream = scope.enter_context(stand_in())
        env = {"SLUICE_OPENAI_BASE_URL": upstream + "/v1"}
        before_root = scope.enter_context(before_checkout(tmp))
        stacks: dict[str, tuple[Stack, Path]] = {}
        after = start_stack(tmp / "after", max_batch=4, extra_env=env)
        scope.callback(stop_stack, after)
        stacks["after"] = (after, ROOT)
        if isinstance(before_root, Path):
            before = start_stack(tmp / "before-data", max_batch=4, extra_env=env, root=before_root)
            scope.callback(stop_stack, before)
            stacks["before"] = (before, before_root)
        calls: dict[str, Callable[[], float]] = {}
        direct = scope.enter_context(
            httpx.Client(
                headers={"authorization": f"Bearer {PROVIDER_KEY}"}, timeout=CALL_TIMEOUT_S
            )
        )
        calls["direct"] = _caller(
            direct, upstream + "/v1/chat/completions", {**BODY, "model": "gpt-4o-mini"}
        )
        for name, (stack, root) in stacks.items():
            key = _with_credential(stack, root)
            http = scope.enter_context(
                httpx.Client(headers={"authorization": f"Bearer {key}"}, timeout=CALL_TIMEOUT_S)
            )
            calls[name] = _caller(http, stack.base_url + "/chat/completions", BODY)
        series: dict[str, list[float]] = {name: [] for name in calls}
        order = list(calls)
        for i in range(warmup + samples):
            rotated = order[i % len(order) :] + order[: i % len(order)]
            for name in rotated:
                elapsed = calls[name]()
                if i >= warmup:
                    series[name].append(elapsed)
    out: dict[str, Any] = {"samples": samples, "before_commit": BEFORE_COMMIT}
    for name in ("before", "after"):
        if name in series:
            out[name] = gateway_summary(series[name], series["direct"])
    if isinstance(before_root, str):
        out["before_missing"] = before_root
    out["direct_ms"] = gateway_summary(series["direct"], series["direct"])["http_ms"]
    return out
