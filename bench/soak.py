"""`make soak`: a long run of mixed traffic at a steady rate against a real stack, then whether
memory stayed flat, every reservation was closed and the ledger holds exactly one record for
every request that must leave one.

    python -m bench.soak                       # 600 s on SQLite, written to docs/bench/
    python -m bench.soak --duration 60         # a short run, written to a temporary folder
    python -m bench.soak --postgres [DSN]      # on a fresh database of that PostgreSQL server

One tick every 1/rate seconds starts a scenario drawn by weight from a seeded generator, unless
`concurrency` are in flight (`bench.soak_traffic`). Each service's RSS (and its anonymous part),
open file descriptors and threads are sampled after a warm-up, every `sample_every` seconds, and
once the traffic has stopped and settled (`bench.procfs`). Open reservations are read two ways:
the reserved tokens on the keys' budgets (`/v1/usage/budgets`, the API) and the rows of the
reservations table still open (a read-only query of the stack's database). The ledger's records
come from the admin usage API. Exits 1 when a check fails (`bench.soak_report.checks`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from bench import soak_report
from bench.config import ROOT
from bench.machine import load_average, machine_info
from bench.procfs import children, mem_available_mib, process_sample, service_name
from bench.soak_traffic import LEDGER_PAGE, Soak, SoakConfig
from bench.stack import Stack, start_stack, stop_stack

DEFAULT_DURATION_S = 600.0
ADMIN_TOKEN = "sluice-admin-soak-" + secrets.token_hex(8)
DRAIN_TIMEOUT_S = 90.0
STACK_LOG_LINES = 20_000  # the last lines `sluice up` printed, kept when a check fails


def _say(message: str) -> None:
    print(f"soak: {message}", flush=True)


def service_pids(stack: Stack) -> dict[str, int]:
    """The stack's processes by name: `sluice up` itself and the four services it started."""
    pids = {"sluice-up": stack.proc.pid}
    for pid in children(stack.proc.pid):
        pids[service_name(pid)] = pid
    return pids


# Configuration -------------------------------------------------------------------------------


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=_env_float("SOAK_DURATION_S", DEFAULT_DURATION_S),
        help="seconds of traffic after the warm-up (env SOAK_DURATION_S; default 600)",
    )
    parser.add_argument("--warmup", type=float, default=_env_float("SOAK_WARMUP_S", 30))
    parser.add_argument(
        "--rate",
        type=float,
        default=_env_float("SOAK_RATE", 2.0),
        help="requests per second (env SOAK_RATE; default 2)",
    )
    parser.add_argument("--concurrency", type=int, default=16, help="most requests in flight")
    parser.add_argument("--sample-every", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--postgres",
        nargs="?",
        const="auto",
        default=os.environ.get("SOAK_PG_DSN"),
        metavar="DSN",
        help="run on a fresh database of this PostgreSQL server (env SOAK_PG_DSN; without a DSN, "
        "the one scripts/ensure_postgres.sh gives)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="where soak.json and soak.md go (default docs/bench/ for a full-length run, "
        "a temporary folder for a shorter one)",
    )
    return parser.parse_args(argv)


def output_dir(args: argparse.Namespace) -> Path:
    if args.out is not None:
        return Path(args.out)
    if args.duration >= DEFAULT_DURATION_S:
        return ROOT / "docs" / "bench"
    return Path(tempfile.mkdtemp(prefix="sluice-soak-"))


# The database ---------------------------------------------------------------------------------


@dataclass
class Database:
    """The stack's database: its URL, how to count open reservations, how to drop it."""

    url: str
    kind: str
    drop: Callable[[], None] = lambda: None

    def open_reservations(self) -> int:
        """Rows of the reservations table not settled yet (read-only)."""
        sql = "SELECT COUNT(*) FROM reservations WHERE settled_at IS NULL"
        if self.kind == "sqlite":
            path = self.url.split(":///", 1)[1]
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as conn:
                return int(conn.execute(sql).fetchone()[0])
        return int(asyncio.run(_pg_scalar(_pg_dsn(self.url), sql)))


def _pg_dsn(url: str) -> str:
    """A SQLAlchemy URL as asyncpg takes it."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _pg_scalar(dsn: str, sql: str) -> Any:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


def database(args: argparse.Namespace, data_dir: Path) -> Database:
    if not args.postgres:
        return Database(f"sqlite+aiosqlite:///{data_dir / 'sluice.db'}", "sqlite")
    dsn = args.postgres
    if dsn == "auto":
        dsn = subprocess.run(
            [str(ROOT / "scripts" / "ensure_postgres.sh")],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        ).stdout.strip()
    name = f"sluice_soak_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_scalar(dsn, f'CREATE DATABASE "{name}"'))
    url = make_url(dsn).set(drivername="postgresql+asyncpg", database=name)
    return Database(
        url.render_as_string(hide_password=False),
        "postgresql",
        lambda: asyncio.run(_pg_scalar(dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')),
    )


# The run -------------------------------------------------------------------------------------


class Sampler:
    """RSS, fds and threads of the stack's processes, with the traffic and reservations so far."""

    def __init__(self, pids: dict[str, int], db: Database, soak: Soak, every_s: float) -> None:
        self.pids = pids
        self.db = db
        self.soak = soak
        self.every_s = every_s
        self.samples: list[dict[str, Any]] = []
        self.t0 = time.monotonic()
        self.next_at = 0.0

    async def take(self, phase: str) -> dict[str, Any]:
        services = {}
        for name, pid in self.pids.items():
            if (s := process_sample(pid)) is not None:
                services[name] = s
        sample = {
            "t_s": round(time.monotonic() - self.t0, 1),
            "phase": phase,
            # The machine's other work shows here: a shared machine can stall everything.
            "load_1m": (load_average() or [0.0])[0],
            "mem_available_mib": mem_available_mib(),
            "sent": self.soak.tally.sent,
            "open_reservations": await asyncio.to_thread(self.db.open_reservations),
            "services": services,
        }
        self.samples.append(sample)
        self.next_at = time.monotonic() + self.every_s
        return sample

    async def maybe(self) -> None:
        if time.monotonic() >= self.next_at:
            s = await self.take("run")
            rss = ", ".join(
                f"{n} {v['rss_kib'] / 1024:.0f} ({v['anon_kib'] / 1024:.0f} anon)"
                for n, v in s["services"].items()
            )
            _say(
                f"t={s['t_s']:.0f}s sent={s['sent']} open reservations={s['open_reservations']} "
                f"load {s['load_1m']:.1f} RSS MiB: {rss}"
            )


async def _until(
    check: Callable[[], Awaitable[bool]], timeout_s: float, every_s: float = 1.0
) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        if await check():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(every_s)


async def soak(stack: Stack, cfg: SoakConfig, db: Database) -> dict[str, Any]:
    runner = Soak(stack, cfg, ADMIN_TOKEN)
    machine = machine_info(ROOT)
    try:
        await runner.setup()
        pids = service_pids(stack)
        _say("processes: " + ", ".join(f"{n} {p}" for n, p in pids.items()))
        sampler = Sampler(pids, db, runner, cfg.sample_every_s)

        async def nothing() -> None:
            return None

        _say(f"warm-up: {cfg.warmup_s:.0f} s at {cfg.rate:g}/s")
        await runner.traffic(cfg.warmup_s, nothing)
        await runner.finish()
        warmup = {"ticks": sum(runner.ticks.values()), "answers": runner.tally.sent}
        sampler.t0 = time.monotonic()
        await sampler.take("start")
        _say(
            f"traffic: {cfg.duration_s:.0f} s at {cfg.rate:g}/s, at most {cfg.concurrency} at once"
        )
        started = time.monotonic()
        await runner.traffic(cfg.duration_s, sampler.maybe)
        await runner.finish()
        elapsed = time.monotonic() - started
        _say(f"traffic stopped after {elapsed:.0f} s; {runner.tally.sent} answers; settling")

        stopped = time.monotonic()
        expected = runner.tally.expected_total
        state: dict[str, Any] = {}

        async def drained() -> bool:
            state["open"] = await asyncio.to_thread(db.open_reservations)
            state["reserved"] = await runner.reserved_tokens()
            return state["open"] == 0 and state["reserved"] == 0

        await _until(drained, DRAIN_TIMEOUT_S)
        drain_s = time.monotonic() - stopped

        async def recorded() -> bool:
            state["per_key"] = await runner.ledger_per_key()
            return sum(state["per_key"].values()) >= expected

        await _until(recorded, DRAIN_TIMEOUT_S)
        await sampler.take("end")
        records = await runner.ledger_records()
        phases = {
            "warmup": warmup,
            "run": {
                "ticks": sum(runner.ticks.values()) - warmup["ticks"],
                "answers": runner.tally.sent - warmup["answers"],
                "elapsed_s": round(elapsed, 1),
            },
            "drain_s": round(drain_s, 1),
        }
        return assemble(cfg, machine, runner, sampler, state, records, phases)
    finally:
        await runner.aclose()


def assemble(
    cfg: SoakConfig,
    machine: dict[str, Any],
    runner: Soak,
    sampler: Sampler,
    state: dict[str, Any],
    records: list[dict[str, Any]],
    phases: dict[str, Any],
) -> dict[str, Any]:
    """The result as one JSON-able dict (what soak.json holds and the report renders)."""
    tally = runner.tally
    per_key: Counter[str] = state["per_key"]
    keys = runner.keys
    roles: dict[str, dict[str, Any]] = {}
    mismatched = 0
    for key_id in set(per_key) | set(tally.per_key):
        mismatched += tally.per_key.get(key_id, 0) != per_key.get(key_id, 0)
        role = keys.role_of(key_id)
        row = roles.setdefault(role, {"role": role, "ids": [], "expected": 0, "recorded": 0})
        row["ids"].append(key_id)
        row["expected"] += tally.per_key.get(key_id, 0)
        row["recorded"] += per_key.get(key_id, 0)
    rows = []
    for row in roles.values():
        ids = row.pop("ids")
        row["key_id"] = ids[0] if len(ids) == 1 else f"{len(ids)} keys"
        rows.append(row)
    by_status = Counter(r["status"] for r in records)
    ok_tokens = sum(
        int(r["prompt_tokens"]) + int(r["completion_tokens"])
        for r in records
        if r["status"] == "ok"
    )
    cancelled = [int(r["completion_tokens"]) for r in records if r["status"] == "cancelled"]
    traffic = {
        **tally.to_json(),
        "phases": phases,
        "scenarios": {
            name: soak_report.latency_summary(runner.latency_s[name])
            for name in sorted(runner.ticks)
        },
        "server_errors": tally.server_errors(),
    }
    result: dict[str, Any] = {
        "config": cfg.to_json(),
        "machine": machine,
        "load_average_end": load_average(),
        "samples": sampler.samples,
        "summary": {
            name: soak_report.service_summary(sampler.samples, name) for name in sampler.pids
        },
        "traffic": traffic,
        "reservations": {
            "open_end": state["open"],
            "reserved_tokens_end": state["reserved"],
            "drain_s": phases["drain_s"],
        },
        "ledger": {
            "expected": tally.expected_total,
            "recorded": sum(per_key.values()),
            "per_key": sorted(rows, key=lambda r: str(r["role"])),
            "keys_mismatched": mismatched,
            "by_status": dict(sorted(by_status.items())),
            "records_read": len(records),
            "records_truncated": len(records) >= LEDGER_PAGE,
            "ok_tokens": {"ledger": ok_tokens, "clients": tally.ok_tokens},
            # What an abandoned stream was billed: under its max_tokens when the engine stopped.
            "cancelled_completion_tokens": {
                "n": len(cancelled),
                "max": max(cancelled, default=0),
                "mean": round(sum(cancelled) / len(cancelled), 1) if cancelled else 0,
            },
        },
    }
    result["checks"] = soak_report.checks(result)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = output_dir(args)
    data_dir = Path(tempfile.mkdtemp(prefix="sluice-soak-data-"))
    db = database(args, data_dir)
    cfg = SoakConfig(
        duration_s=args.duration,
        warmup_s=args.warmup,
        rate=args.rate,
        concurrency=args.concurrency,
        sample_every_s=args.sample_every,
        max_tokens=args.max_tokens,
        disconnect_max_tokens=max(64, args.max_tokens),
        seed=args.seed,
        database=db.kind,
    )
    _say(f"starting the stack ({db.kind}) in {data_dir}")
    result: dict[str, Any] | None = None
    try:
        stack = start_stack(
            data_dir,
            max_batch=8,
            database_url=db.url,
            extra_env={"SLUICE_ADMIN_TOKEN": ADMIN_TOKEN},
            keep_lines=STACK_LOG_LINES,
        )
        try:
            result = asyncio.run(soak(stack, cfg, db))
        finally:
            stop_stack(stack)
            (data_dir / "stack.log").write_text(stack.logs())
    finally:
        if result is not None and all(c["ok"] for c in result["checks"]):
            shutil.rmtree(data_dir, ignore_errors=True)
        else:
            _say(f"kept the stack's log and data for a look: {data_dir} (stack.log)")
        db.drop()
    assert result is not None  # soak() returned: it raised otherwise
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    markdown = soak_report.render_markdown(result)
    (out / "soak.md").write_text(markdown)
    print(markdown, flush=True)
    _say(f"wrote {out / 'soak.json'} and {out / 'soak.md'}")
    failed = [c["name"] for c in result["checks"] if not c["ok"]]
    if failed:
        _say("FAILED: " + "; ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
