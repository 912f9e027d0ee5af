"""The gateway benchmark: Sluice's BYOK and hosted paths beside the LiteLLM proxy, under load.

One stand-in OpenAI upstream that answers at once (`bench.upstream`, its own process) behind
every BYOK path; the same non-streaming chat call sent straight to it (the baseline), through
the LiteLLM proxy (`bench.litellm_proxy`), and through Sluice's BYOK path on a SQLite and a
PostgreSQL stack running side by side; plus Sluice's hosted path (one output token from the
bundled model) on both. Phases of closed-loop load (`bench.closed_loop`) at each concurrency,
the targets rotated between rounds so that drift hits all alike; each phase records requests per
second, latencies, errors and the CPU time of every process involved (from /proc). Then the
hosted gateway's cost at concurrency 1 against the engine called directly (`bench.gateway`),
and py-spy profiles of edge, auth and metering on the BYOK path at concurrency 1 and 64.

Every Sluice request carries full governance: a key with rate, token, concurrency and budget
limits and an IP rule, in an organization with its own limits, all generous enough never to
refuse; a refusal would show as an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench import closed_loop, gateway, gateway_report, gateway_stats, litellm_proxy, profiles
from bench.closed_loop import Target
from bench.config import GATEWAY_PROMPT, MODEL, ROOT
from bench.machine import load_average, machine_info
from bench.stack import Stack, free_port, start_stack, stop_stack

BYOK_MODEL = "openai/gpt-4o-mini"
UPSTREAM_MODEL = "gpt-4o-mini"
PROVIDER_KEY = "sk-proj-gatewaybench0123456789abcdefghij"
MESSAGES = [{"role": "user", "content": "Say hi."}]
ORG = "bench"
HUGE = 10**12  # limits that never refuse, but are checked on every request
SERVICES = ("edge", "auth", "metering", "engine")
PROFILED = ("edge", "auth", "metering")
PROFILE_DIR = ROOT / "bench" / "out" / "gateway-profiles"
# Two stacks run side by side, and an engine preallocates KV for max batch x max context: at
# the default 8192 tokens that is about 12 GiB once every slot has served, two of which do not
# fit in this machine's 24 GiB. The hosted probe needs a few dozen tokens; the gateway's own
# work does not depend on either setting.
ENGINE_ENV = {"SLUICE_ENGINE_MAX_CONTEXT": "2048"}

Say = Callable[[str], None]


@dataclass(frozen=True)
class GatewayConfig:
    quick: bool
    concurrencies: tuple[int, ...]
    duration_s: float  # one measured phase
    warmup_s: float  # unrecorded load before each phase, at its concurrency
    settle_s: float  # pause after each phase
    quiet_s: float  # pause after everything has started, before the first (warm-up) load
    rounds: int
    hosted_samples: int  # bench.gateway calls each way, per stack
    hosted_warmup: int
    profile_s: float  # load under py-spy, per database and concurrency
    profile_rate_hz: int
    profile_concurrencies: tuple[int, ...]

    @classmethod
    def full(cls) -> GatewayConfig:
        return cls(
            quick=False,
            concurrencies=(1, 16, 64),
            duration_s=4.0,
            warmup_s=0.5,
            settle_s=0.3,
            quiet_s=10.0,
            rounds=3,
            hosted_samples=200,
            hosted_warmup=10,
            profile_s=8.0,
            profile_rate_hz=200,
            profile_concurrencies=(1, 64),
        )

    @classmethod
    def quick_run(cls) -> GatewayConfig:
        return cls(
            quick=True,
            concurrencies=(1, 16, 64),
            duration_s=1.5,
            warmup_s=0.3,
            settle_s=0.2,
            quiet_s=2.0,
            rounds=1,
            hosted_samples=30,
            hosted_warmup=3,
            profile_s=3.0,
            profile_rate_hz=200,
            profile_concurrencies=(1, 64),
        )


def _say(message: str) -> None:
    print(f"bench: {message}", flush=True)


# --- processes -------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def service_pids(stack: Stack) -> dict[str, int]:
    """The pids of a stack's four services (the children of `sluice up`), by service."""
    pid = stack.proc.pid
    out = {}
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        module = next((a.decode() for a in argv if a.startswith(b"services.")), "")
        if module:
            out[module.removeprefix("services.")] = int(child)
    missing = set(SERVICES) - set(out)
    if missing:
        raise RuntimeError(f"services not found under sluice up: {sorted(missing)}")
    return out


@contextmanager
def stand_in() -> Iterator[tuple[str, int]]:
    """`python -m bench.upstream` on a free port; yields its root URL and its pid."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.upstream", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the benchmark's OpenAI stand-in did not start")
            time.sleep(0.1)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _pg_dsn() -> str | None:
    dsn = os.environ.get("SLUICE_BENCH_PG_DSN")
    if dsn:
        return dsn
    try:
        out = subprocess.run(
            ["scripts/ensure_postgres.sh"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else None


@contextmanager
def postgres_database(say: Say) -> Iterator[str | None]:
    """A throwaway database on the local PostgreSQL server (SLUICE_BENCH_PG_DSN, else what
    scripts/ensure_postgres.sh prints) as a SQLAlchemy URL, dropped afterwards; None without a
    server."""
    import asyncpg
    from sqlalchemy.engine import make_url

    dsn = _pg_dsn()
    if dsn is None:
        say("WARNING: no PostgreSQL server; the PostgreSQL rows are skipped")
        yield None
        return
    name = f"sluice_bench_{uuid.uuid4().hex[:12]}"

    async def execute(sql: str) -> None:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    try:
        asyncio.run(execute(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        say(f"WARNING: PostgreSQL at {dsn} refused a database ({exc}); its rows are skipped")
        yield None
        return
    try:
        url = make_url(dsn).set(drivername="postgresql+asyncpg", database=name)
        yield url.render_as_string(hide_password=False)
    finally:
        with contextlib.suppress(Exception):
            asyncio.run(execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _cli(stack: Stack, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        cwd=ROOT,
        env=stack.env,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.stdout


def governed_key(stack: Stack) -> str:
    """A key of organization `bench` with every kind of limit set (never reached) and an IP
    rule, the organization limited too and given the OpenAI credential; returns the secret."""
    limits = ["--rpm", str(HUGE), "--tpm", str(HUGE), "--max-concurrent", "100000"]
    budget = ["--budget-tokens", str(HUGE * 1000), "--budget-period", "month"]
    out = _cli(
        stack, "keys", "create", "--org", ORG, "--name", "gateway-bench", *limits, *budget,
        "--allow-ip", "127.0.0.0/8",
    )  # fmt: skip
    secret = out.strip().splitlines()[-1].strip()
    _cli(stack, "orgs", "set-limits", ORG, *limits, *budget)
    _cli(stack, "providers", "add", "--org", ORG, "--provider", "openai", "--api-key", PROVIDER_KEY)
    return secret


# --- measuring -------------------------------------------------------------------------------


def byok_body() -> dict[str, Any]:
    return {"model": BYOK_MODEL, "messages": MESSAGES, "max_tokens": 5}


def hosted_body() -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": GATEWAY_PROMPT}],
        "max_tokens": 1,
        "temperature": 0,
    }


def _phase_line(name: str, c: int, row: dict[str, Any]) -> str:
    lat = row["latency_ms"]
    latency = f"p50 {lat['p50']:.1f} / p99 {lat['p99']:.1f} ms" if lat else "no answers"
    errors = f", errors {row['errors']}" if row["error_count"] else ""
    return f"{name:<16} c={c:<3} {row['req_s']:7.1f} req/s, {latency}{errors}"


async def run_phases(
    targets: dict[str, Target],
    procs: dict[str, dict[str, int]],
    cfg: GatewayConfig,
    say: Say,
) -> list[dict[str, Any]]:
    """Every (round, concurrency, target) of `gateway_stats.schedule`, each after a warm-up."""
    clients = {name: closed_loop.make_clients(max(cfg.concurrencies)) for name in targets}
    phases = []
    try:
        # Right after the stacks and the proxy start, this machine runs everything at up to
        # twice the CPU per request (the client's own included) for a few tens of seconds:
        # a pause, then every target once at the lowest and highest concurrency, unrecorded.
        await asyncio.sleep(cfg.quiet_s)
        for name, target in targets.items():
            for c in (min(cfg.concurrencies), max(cfg.concurrencies)):
                await closed_loop.run(clients[name], target, c, cfg.warmup_s * 2)
        say(f"warmed up: every target at c={min(cfg.concurrencies)} and c={max(cfg.concurrencies)}")
        for r, c, name in gateway_stats.schedule(list(targets), cfg.concurrencies, cfg.rounds):
            target, client = targets[name], clients[name]
            await closed_loop.run(client, target, c, cfg.warmup_s)
            before = {p: cpu_seconds(pid) for p, pid in procs[name].items()}
            phase = await closed_loop.run(client, target, c, cfg.duration_s)
            after = {p: cpu_seconds(pid) for p, pid in procs[name].items()}
            record = {
                "round": r,
                "concurrency": c,
                "target": name,
                "latencies_ms": phase.latencies_ms,
                "errors": dict(phase.errors),
                "wall_s": phase.wall_s,
                "cpu_s": {p: after[p] - before[p] for p in before},
                "client_cpu_s": phase.client_cpu_s,
                "load_1min": load_average()[:1],
            }
            phases.append(record)
            say(_phase_line(name, c, gateway_stats.summarize([record])))
            await asyncio.sleep(cfg.settle_s)
    finally:
        for pool in clients.values():
            await closed_loop.close(pool)
    return phases


def rows_from(phases: list[dict[str, Any]], targets_meta: dict[str, Any]) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {}
    for name, meta in targets_meta.items():
        for c in sorted({p["concurrency"] for p in phases if p["target"] == name}):
            mine = [p for p in phases if p["target"] == name and p["concurrency"] == c]
            row = gateway_stats.summarize(mine)
            row["compare"] = meta["kind"] != "hosted"
            rows.setdefault(name, {})[str(c)] = row
    gateway_stats.add_added_latency(rows)
    return rows


def compact_phases(phases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The phases without their latency lists: what results.json keeps of each."""
    out = []
    for p in phases:
        row = gateway_stats.summarize([p])
        lat = row["latency_ms"] or {}
        out.append(
            {
                "round": p["round"],
                "concurrency": p["concurrency"],
                "target": p["target"],
                "req_s": round(row["req_s"], 2),
                "p50_ms": round(lat.get("p50", 0.0), 3),
                "p99_ms": round(lat.get("p99", 0.0), 3),
                "errors": p["errors"],
                "load_1min": p.get("load_1min"),
            }
        )
    return out


async def profile_one(
    py_spy: Path,
    target: Target,
    pids: dict[str, int],
    c: int,
    cfg: GatewayConfig,
    out_dir: Path,
) -> dict[str, Any]:
    """Load at concurrency `c` for `profile_s` with py-spy on edge, auth and metering."""
    client = closed_loop.make_clients(c)
    try:
        await closed_loop.run(client, target, c, cfg.warmup_s)
        with profiles.record(
            py_spy, {p: pids[p] for p in PROFILED}, out_dir, cfg.profile_rate_hz
        ) as paths:
            before = {p: cpu_seconds(pids[p]) for p in PROFILED}
            phase = await closed_loop.run(client, target, c, cfg.profile_s)
            after = {p: cpu_seconds(pids[p]) for p in PROFILED}
    finally:
        await closed_loop.close(client)
    out: dict[str, Any] = {
        "concurrency": c,
        "requests": phase.requests,
        "req_s": phase.answered / phase.wall_s if phase.wall_s else 0.0,
        "rate_hz": cfg.profile_rate_hz,
        # py-spy's raw output, kept under bench/out (git-ignored) for a closer look.
        "files": {p: str(path.relative_to(ROOT)) for p, path in paths.items()},
        "processes": {},
    }
    for p in PROFILED:
        summary = profiles.summarize(paths[p].read_text())
        summary["sampled_ms_per_request"] = profiles.per_request_ms(
            summary, cfg.profile_rate_hz, phase.requests
        )
        summary["cpu_ms_per_request"] = (
            (after[p] - before[p]) * 1e3 / phase.requests if phase.requests else None
        )
        out["processes"][p] = summary
    return out


def _hosted_gateway(stack: Stack, key: str, cfg: GatewayConfig) -> dict[str, Any]:
    summary = gateway.measure(
        stack.base_url,
        key,
        stack.engine_addr,
        GATEWAY_PROMPT,
        cfg.hosted_samples,
        cfg.hosted_warmup,
    )
    summary.pop("raw_http_ms", None)
    summary.pop("raw_direct_ms", None)
    return summary


def measure(cfg: GatewayConfig, work: Path, say: Say = _say) -> dict[str, Any]:
    """The whole benchmark; returns what gateway.json holds (without the verdicts)."""
    venv = litellm_proxy.ensure_env(say=say)
    results: dict[str, Any] = {
        "config": dataclasses.asdict(cfg),
        "machine": machine_info(ROOT),
        "litellm_version": litellm_proxy.LITELLM_VERSION,
        "databases": [],
        "targets": {},
        "rows": {},
        "hosted_gateway": {},
        "profiles": {},
    }
    with ExitStack() as scope:
        upstream, upstream_pid = scope.enter_context(stand_in())
        proxy = scope.enter_context(
            litellm_proxy.running_proxy(
                venv, work / "litellm", free_port(), upstream + "/v1", PROVIDER_KEY, UPSTREAM_MODEL
            )
        )
        pg_url = scope.enter_context(postgres_database(say))
        env = {"SLUICE_OPENAI_BASE_URL": upstream + "/v1", **ENGINE_ENV}
        stacks: dict[str, Stack] = {}
        for database, url in (("sqlite", None), ("postgres", pg_url)):
            if database == "postgres" and url is None:
                continue
            say(f"starting a stack on {database}")
            stacks[database] = start_stack(work / database, database_url=url, extra_env=env)
            scope.callback(stop_stack, stacks[database])
        keys = {database: governed_key(stack) for database, stack in stacks.items()}
        pids = {database: service_pids(stack) for database, stack in stacks.items()}
        results["databases"] = list(stacks)

        targets: dict[str, Target] = {
            gateway_stats.DIRECT: Target(
                gateway_stats.DIRECT,
                upstream + "/v1/chat/completions",
                PROVIDER_KEY,
                {**byok_body(), "model": UPSTREAM_MODEL},
            ),
            gateway_stats.LITELLM: Target(
                gateway_stats.LITELLM,
                proxy.base_url + "/chat/completions",
                proxy.master_key,
                {**byok_body(), "model": UPSTREAM_MODEL},
            ),
        }
        meta: dict[str, Any] = {
            gateway_stats.DIRECT: {"kind": "direct", "database": None},
            gateway_stats.LITELLM: {"kind": "litellm", "database": None},
        }
        procs: dict[str, dict[str, int]] = {
            gateway_stats.DIRECT: {"stand-in": upstream_pid},
            gateway_stats.LITELLM: {"litellm": proxy.proc.pid, "stand-in": upstream_pid},
        }
        for database, stack in stacks.items():
            url = stack.base_url + "/chat/completions"
            targets[f"byok-{database}"] = Target(
                f"byok-{database}", url, keys[database], byok_body()
            )
            meta[f"byok-{database}"] = {"kind": "byok", "database": database}
            procs[f"byok-{database}"] = {**pids[database], "stand-in": upstream_pid}
        for database, stack in stacks.items():
            url = stack.base_url + "/chat/completions"
            name = f"hosted-{database}"
            targets[name] = Target(name, url, keys[database], hosted_body())
            meta[name] = {"kind": "hosted", "database": database}
            procs[name] = dict(pids[database])
        results["targets"] = meta
        say(
            f"{len(targets)} targets x {len(cfg.concurrencies)} concurrencies x {cfg.rounds} "
            f"rounds, {cfg.duration_s:g} s each"
        )
        phases = closed_loop.run_loop(run_phases(targets, procs, cfg, say))
        results["rows"] = rows_from(phases, meta)
        results["phases"] = compact_phases(phases)

        for database, stack in stacks.items():
            say(f"hosted gateway on {database}: {cfg.hosted_samples} calls each way")
            g = results["hosted_gateway"][database] = _hosted_gateway(stack, keys[database], cfg)
            say(
                f"hosted gateway on {database}: HTTP p50 {g['http_ms']['p50']:.2f} ms, engine "
                f"direct {g['direct_ms']['p50']:.2f} ms, added {g['added_p50_ms']:+.2f} ms"
            )

        py_spy = venv / "bin" / "py-spy"
        for database in stacks:
            for c in cfg.profile_concurrencies:
                say(f"profiling BYOK on {database} at c={c} for {cfg.profile_s:g} s")
                out_dir = PROFILE_DIR / f"{database}-c{c}"
                results["profiles"][f"{database}-c{c}"] = closed_loop.run_loop(
                    profile_one(
                        py_spy, targets[f"byok-{database}"], pids[database], c, cfg, out_dir
                    )
                )
        for stack in stacks.values():
            if not stack.alive():
                raise RuntimeError(f"a stack died during the run:\n{stack.logs()}")
    results["machine"]["load_average_end"] = load_average()
    return results


def run(quick: bool, say: Say = _say) -> dict[str, Any]:
    cfg = GatewayConfig.quick_run() if quick else GatewayConfig.full()
    started = time.perf_counter()
    load_now = load_average()
    if load_now and load_now[0] >= 1.0:
        say(f"WARNING: load average {load_now[0]:.2f}: other work shares the cores")
    with tempfile.TemporaryDirectory(prefix="sluice-gateway-bench-") as tmp:
        results = measure(cfg, Path(tmp), say)
    results["duration_s"] = time.perf_counter() - started
    return results


def publish(results: dict[str, Any], bench_dir: Path, images: Path, performance: Path) -> None:
    """Verdicts, gateway.json, gateway.md, the charts and the PERFORMANCE.md section; prints
    the verdicts."""
    verdicts = gateway_stats.evaluate(results)
    written = gateway_report.write(results, verdicts, bench_dir, performance)
    from bench.gateway_plots import write_charts  # matplotlib only once the numbers are saved

    written += write_charts(results, images)
    print()
    for v in verdicts:
        print(f"  ({v.key}) {v.status():>12}  {v.target}: {v.measured}")
    print()
    _say("wrote " + ", ".join(str(p) for p in written))
