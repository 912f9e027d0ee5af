"""The soak's traffic (see `bench.soak`): the scenarios a tick may start, each one request or a
few, and what they got back (a `bench.soak_report.Tally`).

Chat and legacy completions, streamed and not (the official `openai` SDK); streams the client
abandons after two chunks (`httpx`); refusals of every kind: a bad key, invalid bodies, a body
over the size limit, an unknown model, a prompt over the context, a rate-limited key, a key
without budget, a key refused by its IP rule; and the admin API (organizations, projects and keys
created, used once, revoked, refused; lists; usage queries). Which answers leave a ledger record
is in `bench.soak_report`.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
from openai import AsyncOpenAI

from bench.soak_report import REVOCATION_WAIT_S, Tally
from bench.stack import Stack

MODEL = "smollm2-135m-instruct"
CLIENT_TIMEOUT_S = 120.0
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


@dataclass(frozen=True)
class SoakConfig:
    """One soak's shape, as its flags set it (written into soak.json)."""

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

    def __init__(self, stack: Stack, cfg: SoakConfig, admin_token: str) -> None:
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
            headers={"authorization": f"Bearer {admin_token}"},
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
        paths: list[tuple[str, dict[str, Any]]] = [
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
