"""What the soak reads about processes and the machine from /proc (Linux): a process's
children, the service it runs, its memory, descriptors and threads."""

from __future__ import annotations

import os
from pathlib import Path


def children(pid: int) -> list[int]:
    """Processes whose parent is `pid`, from /proc/*/stat."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces; the parent pid follows it.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


def service_name(pid: int) -> str:
    """`edge`, `auth`, ... from a `python -m services.NAME` command line."""
    args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    for a, b in zip(args, args[1:], strict=False):
        if a == b"-m" and b.startswith(b"services."):
            return b.decode().removeprefix("services.")
    return f"pid-{pid}"


def process_sample(pid: int) -> dict[str, int] | None:
    """RSS (KiB; its anonymous part too: the heap, which a leak grows; file-backed pages such
    as the model's and the libraries' are dropped by the kernel under memory pressure), open file
    descriptors and threads of one process; None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    values = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "pid": pid,
        "rss_kib": int(values["VmRSS"].split()[0]),
        "anon_kib": int(values["RssAnon"].split()[0]),
        "fds": fds,
        "threads": int(values["Threads"]),
    }


def mem_available_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    return 0
