"""The stack under test: `python -m services.cli up` on free loopback ports with a throwaway
data dir (SQLite unless a database URL is given), started and stopped by the benchmark and by the
end-to-end tests.

The same command a developer runs (`make run`), so the numbers include every hop a client pays
for: edge, auth, metering and engine as four processes.
"""

from __future__ import annotations

import collections
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.config import ROOT

START_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 30.0
KEY_PREFIX = "sk-sluice-"


def free_port() -> int:
    """A TCP port that was free a moment ago (the usual small race is acceptable here)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Stack:
    """A running `sluice up`: where to reach it and the dev key it printed."""

    proc: subprocess.Popen[str]
    base_url: str  # http://127.0.0.1:PORT/v1
    engine_addr: str  # host:port of the engine's gRPC server, for direct calls
    key: str
    output: collections.deque[str]  # the lines `sluice up` printed (the last ones, if bounded)
    env: dict[str, str]  # the environment it runs with, for CLI calls against it

    def alive(self) -> bool:
        return self.proc.poll() is None

    def logs(self) -> str:
        return "".join(self.output)


def stack_env(
    data_dir: Path,
    ports: dict[str, int],
    max_batch: int,
    database_url: str | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment for `sluice up`: inherited, minus any SLUICE_* the caller had set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env.update(
        SLUICE_DATA_DIR=str(data_dir / "var"),
        SLUICE_DATABASE_URL=database_url or f"sqlite+aiosqlite:///{data_dir / 'sluice.db'}",
        SLUICE_MODELS_DIR=str(ROOT / "models"),
        SLUICE_MODEL_VARIANT="cpu-int4",
        SLUICE_AUTH_ADDR=f"127.0.0.1:{ports['auth']}",
        SLUICE_METERING_ADDR=f"127.0.0.1:{ports['metering']}",
        SLUICE_ENGINE_ADDR=f"127.0.0.1:{ports['engine']}",
        SLUICE_EDGE_HOST="127.0.0.1",
        SLUICE_EDGE_PORT=str(ports["edge"]),
        SLUICE_ENGINE_MAX_BATCH=str(max_batch),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra_env or {})
    return env


def start_stack(
    data_dir: Path,
    *,
    max_batch: int = 32,
    database_url: str | None = None,
    extra_env: Mapping[str, str] | None = None,
    keep_lines: int | None = 200,
    root: Path = ROOT,
) -> Stack:
    """Starts `sluice up` and returns once it has printed the dev key (all four services up).

    `keep_lines=None` keeps every line it prints (tests search the whole log for secrets);
    `root` is the checkout whose code runs (another commit's, for a before/after comparison).
    """
    ports = {name: free_port() for name in ("auth", "metering", "engine", "edge")}
    env = stack_env(data_dir, ports, max_batch, database_url, extra_env)
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up"],
        env=env,
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: collections.deque[str] = collections.deque(maxlen=keep_lines)
    keys: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        # Keeps draining the pipe for the whole run, so a chatty service never blocks on it.
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            if line.startswith(KEY_PREFIX):
                keys.append(line.strip())
                ready.set()
        ready.set()

    threading.Thread(target=pump, name="stack-output", daemon=True).start()
    if not ready.wait(START_TIMEOUT_S) or not keys or proc.poll() is not None:
        proc.kill()
        proc.wait()
        raise RuntimeError("the stack did not start:\n" + "".join(output))
    return Stack(
        proc=proc,
        base_url=f"http://127.0.0.1:{ports['edge']}/v1",
        engine_addr=f"127.0.0.1:{ports['engine']}",
        key=keys[0],
        output=output,
        env=env,
    )


def stop_stack(stack: Stack) -> None:
    """SIGTERM to `sluice up`, which stops its four services in order; SIGKILL if it hangs."""
    if stack.proc.poll() is None:
        stack.proc.terminate()
        try:
            stack.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            stack.proc.kill()
            stack.proc.wait()
    if stack.proc.stdout is not None:
        stack.proc.stdout.close()


@contextmanager
def running_stack(data_dir: Path, *, max_batch: int = 32) -> Iterator[Stack]:
    """`start_stack` and, whatever happens inside the block, `stop_stack`."""
    stack = start_stack(data_dir, max_batch=max_batch)
    try:
        yield stack
    finally:
        stop_stack(stack)
