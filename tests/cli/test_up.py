"""`sluice up` stops its services one at a time: edge first, metering last, each drained before
the next is told to stop, and one that hangs is killed."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from services.cli.up import STOP_ORDER, _stop

# Logs "<name> term" when SIGTERM arrives, drains for a moment, logs "<name> exit", exits.
CHILD = """
import signal, sys, time
name, log, hang = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
def on_term(*_):
    with open(log, "a") as f:
        f.write(f"{name} term\\n")
    if hang:
        return
    time.sleep(0.2)
    with open(log, "a") as f:
        f.write(f"{name} exit\\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
with open(log, "a") as f:
    f.write(f"{name} ready\\n")
while True:
    time.sleep(0.05)
"""


def _spawn(name: str, log: Path, hang: bool = False) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, name, str(log), "1" if hang else "0"])
    deadline = time.monotonic() + 30
    while f"{name} ready" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    return proc


def test_services_stop_in_order_each_after_the_previous_exited(tmp_path: Path) -> None:
    log = tmp_path / "log"
    procs = {name: _spawn(name, log) for name in ("auth", "metering", "engine", "edge")}
    _stop(procs, timeout_s=30)
    events = [line for line in log.read_text().splitlines() if not line.endswith("ready")]
    assert events == [f"{name} {what}" for name in STOP_ORDER for what in ("term", "exit")]
    assert STOP_ORDER[0] == "edge" and STOP_ORDER[-1] == "metering"
    assert all(proc.returncode == 0 for proc in procs.values())


def test_a_service_that_does_not_stop_is_killed_and_the_rest_still_stop(tmp_path: Path) -> None:
    log = tmp_path / "log"
    procs = {"edge": _spawn("edge", log, hang=True), "metering": _spawn("metering", log)}
    _stop(procs, timeout_s=0.5)
    assert procs["edge"].returncode == -9
    assert procs["metering"].returncode == 0
    assert log.read_text().splitlines()[-2:] == ["metering term", "metering exit"]
