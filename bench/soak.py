"""`make soak`: a long run of mixed traffic at a steady rate against a real stack, then whether
memory stayed flat, every reservation was closed and the ledger holds exactly one record for
every request that must leave one.

    python -m bench.soak                       # 600 s on SQLite, written to docs/bench/
    python -m bench.soak --duration 60         # a short run, written to a temporary folder
    python -m bench.soak --postgres [DSN]      # on a fresh database of that PostgreSQL server

The traffic (one tick every 1/rate seconds, a request kind drawn by weight from a seeded
generator, at most `concurrency` in flight): chat and legacy completions, streamed and not
(the official `openai` SDK); streams the client abandons after two chunks; refusals of every
kind: a bad key, invalid bodies, a body over the size limit, an unknown model, a prompt over the
context, a rate-limited key, a key without budget, a key refused by its IP rule; and the admin
API (organizations, projects and keys created, used, revoked; lists; usage queries) with
`httpx`. Which answers leave a ledger record is in `bench.soak_report`.

Each service's RSS (and its anonymous part), open file descriptors (/proc/PID/fd) and threads are
sampled after a warm-up,
every `sample_every` seconds, and once the traffic has stopped and settled. Open reservations are
read two ways: the reserved tokens on the keys' budgets (`/v1/usage/budgets`, the API) and the
rows of the reservations table still open (a read-only query of the stack's database). The
ledger's records come from the admin usage API. Exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
from openai import AsyncOpenAI
from sqlalchemy.engine import make_url

from bench import soak_report
from bench.config import ROOT
from bench.machine import load_average, machine_info
from bench.soak_report import REVOCATION_WAIT_S, Tally
from bench.stack import Stack, start_stack, stop_stack

MODEL = "smollm2-135m-instruct"
DEFAULT_DURATION_S = 600.0
ADMIN_TOKEN = "sluice-admin-soak-" + secrets.token_hex(8)
DRAIN_TIMEOUT_S = 90.0
CLIENT_TIMEOUT_S = 120.0
STACK_LOG_LINES = 20_000  # the last lines `sluice up` printed, kept when a check fails
LEDGER_PAGE = 10_000  # the most records one admin usage query returns
PROMPTS = (
    "Say hi.",
    "Name a colour.",
    "Write a story about a river that runs through town.",
    "What is two plus two?",
    "Give me a word that rhymes with cat.",
)
# Far over the 8192-token context of the bundled model: the engine refuses it after admission.
TOO_LONG_PROMPT = "hi " * 20_000

# Relative weights of the scenarios a tick may run (see `Soak.scenarios`).
WEIGHTS: dict[str, float] = {
    "chat": 4,
    "chat_stream": 4,
    "completion": 2,
    "completion_stream": 1,
    "disconnect": 2,
    "bad_key": 1,
    "invalid_body": 1.5,
    "too_big": 0.25,
    "unknown_model": 1,
    "context_too_long": 0.5,
    "rate_limited": 1,
    "over_budget": 0.5,
    "ip_denied": 0.5,
    "admin_cycle": 0.25,
    "admin_read": 0.75,
    "usage": 0.75,
}

# What one request ended with: (kind, status, key id, tokens billed to the client, detail).
Outcome = tuple[str, int, str, int, str]


def _say(message: str) -> None:
    print(f"soak: {message}", flush=True)


# Processes -----------------------------------------------------------------------------------


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


def service_pids(stack: Stack) -> dict[str, int]:
    """The stack's processes by name: `sluice up` itself and the four services it started."""
    pids = {"sluice-up": stack.proc.pid}
    for pid in children(stack.proc.pid):
        pids[service_name(pid)] = pid
    return pids


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


# Configuration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SoakConfig:
    duration_s: float
    warmup_s: float
    rate: float
    concurrency: int
    sample_every_s: float
    max_tokens: int
    disconnect_max_tokens: int
    seed: int
    database: str  # "sqlite" or "postgresql"

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "weights": WEIGHTS}


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


# Traffic -------------------------------------------------------------------------------------


@dataclass
class Keys:
    """The keys the soak made through the admin API at the start: secret and id by role."""

    secrets: dict[str, str] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)
    # ids of the keys admin_cycle makes (one chat each before their revocation)
    made: list[str] = field(default_factory=list)

    def role_of(self, key_id: str) -> str:
        for role, kid in self.ids.items():
            if kid == key_id:
                return role
        return "admin-made" if key_id in self.made else "other"


def _status_of(exc: Exception) -> tuple[int, str]:
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code, f"{exc.code}: {exc.message}"
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code, exc.response.text[:300]
    return 0, f"{type(exc).__name__}: {exc}"


class Soak:
    """The traffic against one stack, and what it got back."""

    def __init__(self, stack: Stack, cfg: SoakConfig) -> None:
        self.stack = stack
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.tally = Tally()
        self.keys = Keys()
        self.edge = stack.base_url.removesuffix("/v1")
        self.http = httpx.AsyncClient(
            timeout=CLIENT_TIMEOUT_S,
            limits=httpx.Limits(max_connections=cfg.concurrency * 2 + 8),
        )
        self.admin = httpx.AsyncClient(
            base_url=f"{self.edge}/admin/v1",
            headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=CLIENT_TIMEOUT_S,
        )
        self.clients: dict[str, AsyncOpenAI] = {}
        self.cycles = 0
        self.ticks: Counter[str] = Counter()  # scenarios started, by name
        self.latency_s: defaultdict[str, list[float]] = defaultdict(list)  # scenarios' times
        self.reads = 0
        self.in_flight: set[asyncio.Task[None]] = set()
        from services.edge.body import MAX_BODY_BYTES

        self.oversized = b"x" * (MAX_BODY_BYTES + 1)

    def client(self, secret: str) -> AsyncOpenAI:
        if secret not in self.clients:
            self.clients[secret] = AsyncOpenAI(
                base_url=self.stack.base_url,
                api_key=secret,
                max_retries=0,
                timeout=CLIENT_TIMEOUT_S,
            )
        return self.clients[secret]

    async def aclose(self) -> None:
        for c in self.clients.values():
            await c.close()
        await self.http.aclose()
        await self.admin.aclose()

    # setup ----------------------------------------------------------------------------------

    async def _make_key(self, role: str, body: dict[str, Any]) -> None:
        resp = await self.admin.post("/keys", json={"org": "soak", "name": role, **body})
        resp.raise_for_status()
        made = resp.json()
        self.keys.secrets[role] = made["secret"]
        self.keys.ids[role] = made["key"]["id"]

    async def setup(self) -> None:
        """The soak's own keys. A huge monthly budget on the keys that generate, so that what
        their open reservations hold shows on /v1/usage/budgets."""
        big = {"budget_tokens": 10**12, "budget_period": "month"}
        await self._make_key("main", {"quota": big})
        await self._make_key("rate-limited", {"quota": {**big, "rpm": 2}})
        await self._make_key("no-budget", {"quota": {"budget_tokens": 1, "budget_period": "none"}})
        await self._make_key("ip-denied", {"allowed_ips": ["203.0.113.0/24"]})

    # one request each -----------------------------------------------------------------------

    def _messages(self, prompt: str | None = None) -> list[Any]:
        return [{"role": "user", "content": prompt or self.rng.choice(PROMPTS)}]

    async def _chat(self, kind: str, role: str, *, stream: bool, **over: Any) -> Outcome:
        """A chat request with the key of `role` (see `Keys`)."""
        return await self._chat_with(
            kind, self.keys.secrets[role], self.keys.ids[role], stream=stream, **over
        )

    async def _chat_with(
        self, kind: str, secret: str, key_id: str, *, stream: bool, **over: Any
    ) -> Outcome:
        client = self.client(secret)
        args: dict[str, Any] = {
            "model": MODEL,
            "messages": self._messages(),
            "max_tokens": self.cfg.max_tokens,
            "temperature": 0,
            **over,
        }
        try:
            if stream:
                chunks = await client.chat.completions.create(
                    **args, stream=True, stream_options={"include_usage": True}
                )
                tokens = 0
                async for chunk in chunks:
                    if chunk.usage:
                        tokens = chunk.usage.total_tokens
                return kind, 200, key_id, tokens, ""
            resp = await client.chat.completions.create(**args)
            return kind, 200, key_id, resp.usage.total_tokens if resp.usage else 0, ""
        except Exception as exc:  # noqa: BLE001 - every failure is an outcome to tally
            status, detail = _status_of(exc)
            return kind, status, key_id, 0, detail

    async def _completion(self, kind: str, *, stream: bool) -> Outcome:
        key_id = self.keys.ids["main"]
        client = self.client(self.keys.secrets["main"])
        prompt = self.rng.choice(PROMPTS)
        try:
            if stream:
                chunks = await client.completions.create(
                    model=MODEL,
                    prompt=prompt,
                    max_tokens=self.cfg.max_tokens,
                    temperature=0,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                tokens = 0
                async for chunk in chunks:
                    if chunk.usage:
                        tokens = chunk.usage.total_tokens
                return kind, 200, key_id, tokens, ""
            resp = await client.completions.create(
                model=MODEL, prompt=prompt, max_tokens=self.cfg.max_tokens, temperature=0
            )
            return kind, 200, key_id, resp.usage.total_tokens if resp.usage else 0, ""
        except Exception as exc:  # noqa: BLE001
            status, detail = _status_of(exc)
            return kind, status, key_id, 0, detail

    async def _disconnect(self) -> Outcome:
        """A stream the client closes after two chunks: the edge must cancel and settle it."""
        key_id = self.keys.ids["main"]
        body = {
            "model": MODEL,
            "messages": self._messages(PROMPTS[2]),
            "max_tokens": self.cfg.disconnect_max_tokens,
            "temperature": 0,
            "stream": True,
        }
        headers = {"authorization": f"Bearer {self.keys.secrets['main']}"}
        try:
            async with self.http.stream(
                "POST", f"{self.edge}/v1/chat/completions", json=body, headers=headers
            ) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    return "disconnect", resp.status_code, key_id, 0, resp.text[:300]
                seen = 0
                async for line in resp.aiter_lines():
                    if line.startswith("data:"):
                        seen += 1
                        if seen >= 2:
                            break
            # Leaving the block with the body unread closes the connection.
            return "disconnect", 200, key_id, 0, ""
        except Exception as exc:  # noqa: BLE001
            status, detail = _status_of(exc)
            return "disconnect", status, key_id, 0, detail

    async def _raw(
        self, kind: str, path: str, *, key: str | None, content: bytes | None = None, **kw: Any
    ) -> Outcome:
        headers = {"content-type": "application/json"}
        if key is not None:
            headers["authorization"] = f"Bearer {key}"
        try:
            resp = await self.http.post(
                f"{self.edge}{path}", content=content, headers=headers, **kw
            )
            return kind, resp.status_code, "", 0, resp.text[:300]
        except Exception as exc:  # noqa: BLE001
            status, detail = _status_of(exc)
            return kind, status, "", 0, detail

    async def bad_key(self) -> list[Outcome]:
        if self.rng.random() < 0.5:
            # A valid body (an invalid one is refused before the key is looked at), no key.
            body = json.dumps({"model": MODEL, "messages": self._messages(), "max_tokens": 1})
            return [
                await self._raw("bad_key", "/v1/chat/completions", key=None, content=body.encode())
            ]
        forged = "sk-sluice-" + secrets.token_urlsafe(32)
        return [await self._chat_with("bad_key", forged, "", stream=False)]

    async def invalid_body(self) -> list[Outcome]:
        key = self.keys.secrets["main"]
        msgs = self._messages()
        bodies: list[tuple[str, bytes]] = [
            ("/v1/chat/completions", b'{"model": "x", "messages": ['),
            ("/v1/chat/completions", b"[1, 2, 3]"),
            ("/v1/chat/completions", json.dumps({"messages": msgs}).encode()),
            ("/v1/chat/completions", json.dumps({"model": MODEL, "messages": "hi"}).encode()),
            (
                "/v1/chat/completions",
                json.dumps({"model": MODEL, "messages": msgs, "soak_unknown_field": 1}).encode(),
            ),
            (
                "/v1/chat/completions",
                json.dumps({"model": MODEL, "messages": msgs, "max_tokens": "many"}).encode(),
            ),
            (
                "/v1/completions",
                json.dumps({"model": MODEL, "prompt": "hi", "soak_unknown_field": 1}).encode(),
            ),
            ("/v1/completions", json.dumps({"model": MODEL, "prompt": ["a", "b"]}).encode()),
        ]
        path, content = self.rng.choice(bodies)
        return [await self._raw("invalid_body", path, key=key, content=content)]

    async def too_big(self) -> list[Outcome]:
        key = self.keys.secrets["main"]
        return [await self._raw("too_big", "/v1/chat/completions", key=key, content=self.oversized)]

    async def admin_cycle(self) -> list[Outcome]:
        """An organization, a project and a key made, the key used once, revoked, refused."""
        self.cycles += 1
        org, out = f"soak-admin-{self.cycles}-{secrets.token_hex(3)}", []

        async def call(method: str, path: str, **kw: Any) -> httpx.Response | None:
            try:
                resp = await self.admin.request(method, path, **kw)
            except Exception as exc:  # noqa: BLE001
                status, detail = _status_of(exc)
                out.append(("admin", status, "", 0, f"{method} {path}: {detail}"))
                return None
            out.append(("admin", resp.status_code, "", 0, f"{method} {path}: {resp.text[:200]}"))
            return resp if resp.status_code < 300 else None

        if await call("POST", "/organizations", json={"name": org}) is None:
            return out
        if await call("POST", "/projects", json={"org": org, "name": "app"}) is None:
            return out
        made = await call("POST", "/keys", json={"org": org, "name": "k", "project": "app"})
        if made is None:
            return out
        secret, key_id = made.json()["secret"], made.json()["key"]["id"]
        self.keys.made.append(key_id)
        out.append(await self._chat_with("new_key", secret, key_id, stream=False))
        if await call("POST", f"/keys/{key_id}/revoke") is None:
            return out
        await asyncio.sleep(REVOCATION_WAIT_S)
        out.append(await self._chat_with("revoked_key", secret, key_id, stream=False))
        return out

    async def admin_read(self) -> list[Outcome]:
        self.reads += 1
        paths = [
            ("/organizations", {}),
            ("/keys", {"org": "soak"}),
            ("/projects", {"org": "soak"}),
            ("/plans", {}),
            ("/usage/totals", {"group_by": "model"}),
            ("/usage", {"limit": 20, "org": "soak"}),
        ]
        path, params = paths[self.reads % len(paths)]
        try:
            resp = await self.admin.get(path, params=params)
            return [("admin", resp.status_code, "", 0, f"GET {path}: {resp.text[:200]}")]
        except Exception as exc:  # noqa: BLE001
            status, detail = _status_of(exc)
            return [("admin", status, "", 0, detail)]

    async def usage(self) -> list[Outcome]:
        key = self.keys.secrets["main"]
        path = self.rng.choice(["/v1/usage", "/v1/usage/totals", "/v1/usage/budgets"])
        try:
            if self.rng.random() < 0.25:
                await self.client(key).models.list()
                return [("usage", 200, "", 0, "")]
            resp = await self.http.get(
                f"{self.edge}{path}", headers={"authorization": f"Bearer {key}"}
            )
            return [("usage", resp.status_code, "", 0, resp.text[:200])]
        except Exception as exc:  # noqa: BLE001
            status, detail = _status_of(exc)
            return [("usage", status, "", 0, detail)]

    def scenarios(self) -> dict[str, Callable[[], Awaitable[list[Outcome]]]]:
        def one(make: Callable[[], Awaitable[Outcome]]) -> Callable[[], Awaitable[list[Outcome]]]:
            async def run() -> list[Outcome]:
                return [await make()]

            return run

        c = self._chat
        return {
            "chat": one(lambda: c("chat", "main", stream=False)),
            "chat_stream": one(lambda: c("chat_stream", "main", stream=True)),
            "completion": one(lambda: self._completion("completion", stream=False)),
            "completion_stream": one(lambda: self._completion("completion_stream", stream=True)),
            "disconnect": one(self._disconnect),
            "bad_key": self.bad_key,
            "invalid_body": self.invalid_body,
            "too_big": self.too_big,
            "unknown_model": one(
                lambda: c("unknown_model", "main", stream=False, model="soak-no-such-model")
            ),
            "context_too_long": one(
                lambda: c(
                    "context_too_long",
                    "main",
                    stream=False,
                    messages=self._messages(TOO_LONG_PROMPT),
                )
            ),
            "rate_limited": one(lambda: c("rate_limited", "rate-limited", stream=False)),
            "over_budget": one(lambda: c("over_budget", "no-budget", stream=False)),
            "ip_denied": one(lambda: c("ip_denied", "ip-denied", stream=False)),
            "admin_cycle": self.admin_cycle,
            "admin_read": self.admin_read,
            "usage": self.usage,
        }

    # the ticker -----------------------------------------------------------------------------

    async def _run_one(self, name: str, scenario: Callable[[], Awaitable[list[Outcome]]]) -> None:
        started = time.monotonic()
        try:
            outcomes = await scenario()
        except Exception as exc:  # noqa: BLE001 - a bug of the soak itself, reported as such
            outcomes = [("soak_error", 0, "", 0, f"{name}: {type(exc).__name__}: {exc}")]
        self.latency_s[name].append(time.monotonic() - started)
        for kind, status, key_id, tokens, detail in outcomes:
            self.tally.add(kind, status, key_id, tokens, detail)

    async def traffic(self, seconds: float, on_tick: Callable[[], Awaitable[None]]) -> None:
        """Ticks at `rate` per second for `seconds`, each starting one scenario unless
        `concurrency` are in flight; `on_tick` runs between ticks (the sampler)."""
        scenarios = self.scenarios()
        names = list(WEIGHTS)
        weights = [WEIGHTS[n] for n in names]
        interval = 1.0 / self.cfg.rate
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        next_tick = loop.time()
        while next_tick < end:
            await asyncio.sleep(max(0.0, next_tick - loop.time()))
            next_tick += interval
            await on_tick()
            if len(self.in_flight) >= self.cfg.concurrency:
                self.tally.skipped += 1
                continue
            name = self.rng.choices(names, weights)[0]
            self.ticks[name] += 1
            task = loop.create_task(self._run_one(name, scenarios[name]))
            self.in_flight.add(task)
            task.add_done_callback(self.in_flight.discard)

    async def finish(self) -> None:
        """Waits for the requests still in flight."""
        if self.in_flight:
            await asyncio.gather(*self.in_flight, return_exceptions=True)

    # after the traffic ----------------------------------------------------------------------

    async def reserved_tokens(self) -> int:
        """Tokens still reserved on the budgets of the keys that have one (the API's view)."""
        total = 0
        for role in ("main", "rate-limited", "no-budget"):
            resp = await self.http.get(
                f"{self.edge}/v1/usage/budgets",
                headers={"authorization": f"Bearer {self.keys.secrets[role]}"},
            )
            resp.raise_for_status()
            total += sum(int(b["reserved_tokens"]) for b in resp.json()["data"])
        return total

    async def ledger_per_key(self) -> Counter[str]:
        resp = await self.admin.get("/usage/totals", params={"group_by": "key"})
        resp.raise_for_status()
        return Counter({row["group"]: int(row["requests"]) for row in resp.json()["data"]})

    async def ledger_records(self) -> list[dict[str, Any]]:
        resp = await self.admin.get("/usage", params={"limit": LEDGER_PAGE})
        resp.raise_for_status()
        records: list[dict[str, Any]] = resp.json()["data"]
        return records


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
    runner = Soak(stack, cfg)
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
