"""Where a process spends a request: py-spy samples of running services while load runs, summed
into the few tables an optimizer reads first.

`record` attaches `py-spy record --nonblocking` (the target is never paused) to each process and
stops it with SIGINT when the block ends; `summarize` reads py-spy's raw (collapsed) output, one
line per distinct stack, "outer;...;inner N", each frame "function (file)". py-spy leaves idle
threads out, so a sample is a moment a thread was running Python or native code under it (a
thread waiting for the GIL counts too); gRPC's C-core threads hold no Python frames and are not
seen, so the process's CPU time from /proc stays the total to read these shares against.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ATTACH_S = 1.0  # py-spy needs a moment to attach before the load starts
OURS = "services/"
EVENT_LOOP = "event loop (uvloop, C extensions)"
LOOP_FRAMES = frozenset({"run (asyncio/runners.py)", "run (uvloop/__init__.py)"})
THREAD_ROOT = "_bootstrap (threading.py)"
# Under every sample of a thread, so they say nothing as "on the stack".
ROOTS = frozenset({EVENT_LOOP, "<frozen runpy>", "services", "asyncio", "threading", "concurrent"})


def parse_collapsed(text: str) -> list[tuple[list[str], int]]:
    """(frames outermost first, sample count) for each line of py-spy's raw output."""
    out = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        out.append((stack.split(";"), int(count)))
    return out


def frame_file(frame: str) -> str:
    """'run (asyncio/runners.py)' -> 'asyncio/runners.py'."""
    start = frame.rfind(" (")
    return frame[start + 2 : -1] if start >= 0 and frame.endswith(")") else ""


def package(frame: str) -> str:
    """The top-level package or module a frame's code belongs to: 'grpc', 'sqlalchemy',
    'services', 'asyncio', ...; '<frozen runpy>'-style files keep their name. The event loop's
    `run` as the running frame is EVENT_LOOP: uvloop's C loop and the C extensions it calls back
    without a Python frame (gRPC's Cython completion queue among them)."""
    if frame in LOOP_FRAMES:
        return EVENT_LOOP
    path = frame_file(frame)
    if not path or path.startswith("<"):
        return path or "?"
    head = path.split("/", 1)[0]
    return head.removesuffix(".py")


def innermost_ours(frames: list[str]) -> str | None:
    """The deepest frame in our own code (services/...): the function of ours the sample's
    time is spent in or under."""
    for frame in reversed(frames):
        if frame_file(frame).startswith(OURS):
            return frame
    return None


def _top(counter: Counter[str], total: int, n: int) -> list[dict[str, Any]]:
    return [
        {"name": name, "samples": k, "share": k / total if total else 0.0}
        for name, k in counter.most_common(n)
    ]


def summarize(text: str, top: int = 12) -> dict[str, Any]:
    """The samples of one process: by the package of the running (innermost) frame, by every
    package on the stack (inclusive: a sample under grpc and under services counts for both),
    by the innermost function of ours on the stack, by the running function itself, and by
    thread (the event loop's, or the others: SQLite's writer, thread pools)."""
    stacks = parse_collapsed(text)
    total = sum(k for _, k in stacks)
    by_package: Counter[str] = Counter()
    by_package_inclusive: Counter[str] = Counter()
    by_ours: Counter[str] = Counter()
    by_leaf: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    for frames, k in stacks:
        leaf = frames[-1]
        by_package[package(leaf)] += k
        for name in {package(f) for f in frames} - ROOTS:
            by_package_inclusive[name] += k
        by_leaf[leaf] += k
        by_ours[innermost_ours(frames) or "(no frame of ours: server, event loop, framework)"] += k
        threads["other threads" if THREAD_ROOT in frames else "main thread (event loop)"] += k
    return {
        "samples": total,
        "threads": dict(threads),
        "by_package": _top(by_package, total, top),
        "by_package_on_stack": _top(by_package_inclusive, total, top),
        "by_our_function": _top(by_ours, total, top),
        "by_running_function": _top(by_leaf, total, top),
    }


def per_request_ms(summary: Mapping[str, Any], rate_hz: int, requests: int) -> float | None:
    """Sampled time per request: samples / rate / requests, in ms."""
    if requests <= 0:
        return None
    samples: int = summary["samples"]
    return samples / rate_hz * 1e3 / requests


@contextmanager
def record(py_spy: Path, pids: Mapping[str, int], out_dir: Path, rate_hz: int) -> Iterator[dict]:
    """py-spy on each of `pids` for the duration of the block; yields {name: output path}, whose
    files are complete once the block has ended."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / f"{name}.collapsed.txt" for name in pids}
    procs = {}
    for name, pid in pids.items():
        procs[name] = subprocess.Popen(
            [str(py_spy), "record", "--pid", str(pid), "--rate", str(rate_hz), "--nonblocking",
             "--nolineno", "--format", "raw", "--output", str(paths[name])],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
    time.sleep(ATTACH_S)
    try:
        yield paths
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for name, proc in procs.items():
            try:
                _, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            if not paths[name].exists():
                detail = err.decode(errors="replace").strip()[-500:]
                paths[name].write_text("")
                print(f"bench: py-spy wrote nothing for {name}: {detail}", flush=True)
