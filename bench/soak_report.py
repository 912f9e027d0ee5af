"""The soak's bookkeeping and its report: which requests the ledger must hold a record of, the
tally of what was sent and answered, memory and descriptor summaries per service, the verdicts,
and the text and markdown written at the end. Pure: no stack, no network (see `bench.soak`).

Which requests leave a usage record follows the request path (services/edge/governance.py and
metering's admission and settlement):

- refused before the key is known, or before any hop: no record. A bad or revoked key (401),
  an invalid body or unknown field (400 from validation), a body over the size limit (413);
- refused after the key is known: one "rejected" record. An unknown model (404, written by the
  edge when the model does not resolve), an address outside the key's IP rules (403, from auth's
  PERMISSION_DENIED), a rate limit or budget (429, written by metering when it refuses the
  admission), a prompt longer than the context (400 from the engine, after admission);
- admitted: exactly one record at settlement, "ok" when it finished, "cancelled" when the client
  went away mid-stream, "error" when it failed;
- the admin API, `/v1/usage*` and `/v1/models` generate nothing: no record.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from bench.metrics import percentile

# The edge caches a key's principal for up to a second (services.edge.governance), so the soak
# uses a key it revoked only after this long.
REVOCATION_WAIT_S = 2.0


@dataclass(frozen=True)
class Kind:
    """One kind of request the soak sends: the statuses it may get and what each leaves."""

    description: str
    # status -> records that status leaves in the ledger
    records: dict[int, int]
    # the ledger status an expected answer is recorded with ("" = none)
    ledger_status: dict[int, str] = field(default_factory=dict)


OK = {200: 1}
KINDS: dict[str, Kind] = {
    "chat": Kind("chat completion (openai SDK)", OK, {200: "ok"}),
    "chat_stream": Kind("streamed chat completion (openai SDK)", OK, {200: "ok"}),
    "completion": Kind("legacy completion (openai SDK)", OK, {200: "ok"}),
    "completion_stream": Kind("streamed legacy completion (openai SDK)", OK, {200: "ok"}),
    "disconnect": Kind(
        "streamed chat, closed by the client after 2 chunks (httpx)", OK, {200: "cancelled"}
    ),
    "bad_key": Kind("wrong API key (openai SDK): 401", {401: 0}),
    "invalid_body": Kind(
        "invalid body: not JSON, unknown field, wrong type (httpx): 400", {400: 0}
    ),
    "too_big": Kind("body one byte over the edge's limit (httpx): 413", {413: 0}),
    "unknown_model": Kind("unknown model (openai SDK): 404", {404: 1}, {404: "rejected"}),
    "context_too_long": Kind(
        "prompt longer than the model's context (openai SDK): 400 after admission",
        {400: 1},
        {400: "rejected"},
    ),
    "rate_limited": Kind(
        "key with 2 requests per minute (openai SDK): 200 or 429",
        {200: 1, 429: 1},
        {200: "ok", 429: "rejected"},
    ),
    "over_budget": Kind("key with a 1-token budget (openai SDK): 429", {429: 1}, {429: "rejected"}),
    "ip_denied": Kind(
        "key allowed only from 203.0.113.0/24 (openai SDK): 403", {403: 1}, {403: "rejected"}
    ),
    "admin": Kind(
        "admin API: create org, project, key; list; usage; revoke (httpx)", {200: 0, 201: 0}
    ),
    "new_key": Kind("one chat with a key the admin API just made", OK, {200: "ok"}),
    "revoked_key": Kind("the same key after its revocation: 401", {401: 0}),
    "usage": Kind("/v1/usage, /v1/usage/totals, /v1/usage/budgets, /v1/models", {200: 0}),
    # Nothing is expected of it: any count is a failure of the soak's own code.
    "soak_error": Kind("a scenario that raised in the soak itself", {}),
}


def expected_records(kind: str, status: int) -> int | None:
    """Records the ledger must hold for one answer; None when the answer was not one the kind
    expects (a 5xx, a transport error: whether it left a record depends on where it failed)."""
    return KINDS[kind].records.get(status)


@dataclass
class Tally:
    """What was sent and how it was answered, with the records each answer must have left."""

    counts: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    # key id -> records expected for it
    per_key: Counter[str] = field(default_factory=Counter)
    # ledger status -> records expected with it
    per_status: Counter[str] = field(default_factory=Counter)
    # total tokens the clients were told, over the answers recorded "ok"
    ok_tokens: int = 0
    unexpected: list[dict[str, Any]] = field(default_factory=list)
    unexpected_total: int = 0
    # unexpected answers of kinds that can leave a record: each may or may not have left one
    indeterminate: int = 0
    skipped: int = 0  # ticks dropped because `concurrency` requests were already in flight

    UNEXPECTED_KEPT = 50

    def add(
        self, kind: str, status: int, key_id: str = "", tokens: int = 0, detail: str = ""
    ) -> None:
        """One answer: `status` 0 for a transport error, `tokens` what the client was billed."""
        self.counts[kind][status] += 1
        records = expected_records(kind, status)
        if records is None:
            self.unexpected_total += 1
            self.indeterminate += any(KINDS[kind].records.values())
            if len(self.unexpected) < self.UNEXPECTED_KEPT:
                self.unexpected.append({"kind": kind, "status": status, "detail": detail[:300]})
            return
        if records:
            self.per_key[key_id] += records
            recorded_as = KINDS[kind].ledger_status[status]
            self.per_status[recorded_as] += records
            if recorded_as == "ok":
                self.ok_tokens += tokens

    @property
    def sent(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())

    @property
    def expected_total(self) -> int:
        return sum(self.per_key.values())

    def server_errors(self) -> int:
        return sum(n for c in self.counts.values() for s, n in c.items() if s >= 500)

    def to_json(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "skipped": self.skipped,
            "by_kind": {
                kind: {str(s): n for s, n in sorted(c.items())}
                for kind, c in sorted(self.counts.items())
            },
            "expected_records": self.expected_total,
            "expected_per_key": dict(sorted(self.per_key.items())),
            "expected_per_status": dict(sorted(self.per_status.items())),
            "ok_tokens_reported_to_clients": self.ok_tokens,
            "unexpected_total": self.unexpected_total,
            "indeterminate": self.indeterminate,
            "unexpected": self.unexpected,
        }


# Memory and descriptors ----------------------------------------------------------------------


def service_summary(samples: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """Start, end, peak and growth of one service's RSS and its anonymous part (KiB), fds and
    threads over `samples` (each {"t_s", "services": {name: {"rss_kib", "anon_kib", "fds",
    "threads"}}}), plus the growth over the second half alone: what a steady leak shows and a
    warm-up does not."""
    own = [(s["t_s"], s["services"][name]) for s in samples if name in s["services"]]
    if not own:
        return {}
    first, last = own[0][1], own[-1][1]
    mid_t = own[0][0] + (own[-1][0] - own[0][0]) / 2
    mid = min(own, key=lambda ts: abs(ts[0] - mid_t))[1]
    rss = [v["rss_kib"] for _, v in own]
    return {
        "pid": last.get("pid"),
        "rss_start_kib": first["rss_kib"],
        "rss_end_kib": last["rss_kib"],
        "rss_max_kib": max(rss),
        "rss_median_kib": statistics.median(rss),
        "rss_growth_kib": last["rss_kib"] - first["rss_kib"],
        "rss_growth_pct": _pct(last["rss_kib"] - first["rss_kib"], first["rss_kib"]),
        "rss_second_half_growth_kib": last["rss_kib"] - mid["rss_kib"],
        "anon_start_kib": first["anon_kib"],
        "anon_end_kib": last["anon_kib"],
        "anon_max_kib": max(v["anon_kib"] for _, v in own),
        "anon_growth_kib": last["anon_kib"] - first["anon_kib"],
        "anon_growth_pct": _pct(last["anon_kib"] - first["anon_kib"], first["anon_kib"]),
        "anon_second_half_growth_kib": last["anon_kib"] - mid["anon_kib"],
        "fds_start": first["fds"],
        "fds_end": last["fds"],
        "fds_max": max(v["fds"] for _, v in own),
        "threads_start": first["threads"],
        "threads_end": last["threads"],
    }


def latency_summary(seconds: list[float]) -> dict[str, Any]:
    """How many ran and how long they took (ms): p50, p95, max."""
    if not seconds:
        return {"n": 0}
    return {
        "n": len(seconds),
        "p50_ms": round(percentile(seconds, 50) * 1000, 1),
        "p95_ms": round(percentile(seconds, 95) * 1000, 1),
        "max_ms": round(max(seconds) * 1000, 1),
    }


def _pct(delta: float, base: float) -> float:
    return round(100.0 * delta / base, 2) if base else 0.0


# Verdicts ------------------------------------------------------------------------------------


def checks(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The soak's pass/fail conditions, each {"name", "ok", "detail"}."""
    res = result["reservations"]
    ledger = result["ledger"]
    traffic = result["traffic"]
    out = [
        {
            "name": "open reservations return to zero",
            "ok": res["open_end"] == 0 and res["reserved_tokens_end"] == 0,
            "detail": (
                f"{res['open_end']} open reservation rows, {res['reserved_tokens_end']} tokens "
                f"reserved on the keys' budgets, {res['drain_s']:.1f} s after the traffic stopped"
            ),
        },
        {
            "name": "ledger records equal the requests that must leave one",
            "ok": ledger["recorded"] == ledger["expected"] and ledger["keys_mismatched"] == 0,
            "detail": f"sent {traffic['sent']}, expected {ledger['expected']} records, "
            f"recorded {ledger['recorded']}; {ledger['keys_mismatched']} keys differ"
            + (
                f"; {traffic['indeterminate']} answers of unknown outcome (5xx, timeouts) "
                "may each have left one"
                if traffic.get("indeterminate")
                else ""
            ),
        },
        {
            "name": "no 5xx and no unexpected answer",
            "ok": traffic["unexpected_total"] == 0,
            "detail": f"{traffic['unexpected_total']} unexpected answers "
            f"({traffic['server_errors']} of them 5xx)",
        },
    ]
    return out


# Rendering -----------------------------------------------------------------------------------


def _mib(kib: float) -> str:
    return f"{kib / 1024:.1f}"


def _signed_mib(kib: float) -> str:
    return f"{kib / 1024:+.1f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def memory_table(result: dict[str, Any]) -> list[str]:
    rows = []
    for name, s in result["summary"].items():
        if not s:
            continue
        rows.append(
            [
                name,
                str(s["pid"]),
                _mib(s["rss_start_kib"]),
                _mib(s["rss_end_kib"]),
                f"{_signed_mib(s['rss_growth_kib'])} ({s['rss_growth_pct']:+.1f}%)",
                _signed_mib(s["rss_second_half_growth_kib"]),
                _mib(s["rss_max_kib"]),
                f"{_mib(s['anon_start_kib'])} → {_mib(s['anon_end_kib'])}",
                f"{_signed_mib(s['anon_growth_kib'])} ({s['anon_growth_pct']:+.1f}%)",
                _signed_mib(s["anon_second_half_growth_kib"]),
                f"{s['fds_start']} / {s['fds_end']} / {s['fds_max']}",
                f"{s['threads_start']} / {s['threads_end']}",
            ]
        )
    return _table(
        [
            "service",
            "pid",
            "RSS start MiB",
            "RSS end MiB",
            "growth MiB",
            "2nd-half growth MiB",
            "RSS peak MiB",
            "anon start → end MiB",
            "anon growth MiB",
            "anon 2nd-half MiB",
            "fds start / end / peak",
            "threads start / end",
        ],
        rows,
    )


def samples_table(result: dict[str, Any]) -> list[str]:
    names = list(result["summary"])
    rows = []
    for s in result["samples"]:
        cells = [
            f"{s['t_s']:.0f}",
            s["phase"],
            str(s["sent"]),
            str(s["open_reservations"]),
            f"{s.get('load_1m', 0):.1f}",
            str(s.get("mem_available_mib", "")),
        ]
        for name in names:
            v = s["services"].get(name)
            cells.append(f"{_mib(v['rss_kib'])} ({_mib(v['anon_kib'])}) / {v['fds']}" if v else "-")
        rows.append(cells)
    header = ["t s", "phase", "sent", "open res.", "load 1m", "MemAvailable MiB"] + [
        f"{n} RSS (anon) MiB / fds" for n in names
    ]
    return _table(header, rows)


def traffic_table(result: dict[str, Any]) -> list[str]:
    by_kind = result["traffic"]["by_kind"]
    rows = []
    for kind, info in KINDS.items():
        statuses = by_kind.get(kind, {})
        sent = sum(statuses.values())
        answers = ", ".join(f"{s}: {n}" for s, n in statuses.items()) or "-"
        records = sum(n * (expected_records(kind, int(s)) or 0) for s, n in statuses.items())
        rows.append([kind, info.description, str(sent), answers, str(records)])
    return _table(["kind", "what", "sent", "answers (status: n)", "records expected"], rows)


def scenario_table(result: dict[str, Any]) -> list[str]:
    rows = [
        [name, str(s["n"]), f"{s.get('p50_ms', 0):.0f}", f"{s.get('p95_ms', 0):.0f}",
         f"{s.get('max_ms', 0):.0f}"]
        for name, s in result["traffic"]["scenarios"].items()
    ]  # fmt: skip
    return _table(["scenario", "started", "p50 ms", "p95 ms", "max ms"], rows)


def ledger_table(result: dict[str, Any]) -> list[str]:
    rows = [
        [r["role"], r["key_id"], str(r["expected"]), str(r["recorded"]),
         "equal" if r["expected"] == r["recorded"] else "DIFFERENT"]
        for r in result["ledger"]["per_key"]
    ]  # fmt: skip
    return _table(["key", "id", "expected", "recorded", ""], rows)


def status_table(result: dict[str, Any]) -> list[str]:
    exp = result["traffic"]["expected_per_status"]
    got = result["ledger"]["by_status"]
    rows = [
        [status, str(exp.get(status, 0)), str(got.get(status, 0))]
        for status in sorted(set(exp) | set(got))
    ]
    return _table(["ledger status", "expected", "recorded"], rows)


def _equal(a: int, b: int) -> str:
    return "equal" if a == b else "NOT equal"


def render_markdown(result: dict[str, Any]) -> str:
    cfg = result["config"]
    machine = result["machine"]
    traffic = result["traffic"]
    ledger = result["ledger"]
    tokens = ledger["ok_tokens"]
    warm, run = traffic["phases"]["warmup"], traffic["phases"]["run"]
    cancelled = ledger["cancelled_completion_tokens"]
    verdict = "PASS" if all(c["ok"] for c in result["checks"]) else "FAIL"
    lines = [
        f"# Soak: {cfg['duration_s']:.0f} s of mixed traffic — {verdict}",
        "",
        f"{machine.get('date', '')}, commit {machine.get('git_commit', '?')}, "
        f"{machine.get('cpu_count', '?')} cores ({machine.get('cpu_model', '?')}), "
        f"database {cfg['database']}; load average at start "
        f"{machine.get('load_average_start')}, at end {result.get('load_average_end')}.",
        "",
        f"{cfg['rate']:g} ticks per second, each starting one scenario drawn by weight (an admin "
        f"cycle is 6 requests, the others one), at most {cfg['concurrency']} in flight, "
        f"max_tokens {cfg['max_tokens']} ({cfg['disconnect_max_tokens']} for the streams the "
        f"client abandons). Warm-up: {warm['ticks']} ticks, {warm['answers']} requests in "
        f"{cfg['warmup_s']:.0f} s before the first sample. Measured: {run['ticks']} ticks, "
        f"{run['answers']} requests in {run['elapsed_s']:.0f} s "
        f"({run['answers'] / max(run['elapsed_s'], 1e-9):.2f} requests/s); "
        f"{traffic['skipped']} ticks skipped because the concurrency bound was reached. "
        f"Reservations were read {traffic['phases']['drain_s']:.1f} s after the last answer.",
        "",
        "## Checks",
        "",
    ]
    lines += [
        f"- {'ok' if c['ok'] else 'FAILED'}: {c['name']} ({c['detail']})" for c in result["checks"]
    ]
    lines += [
        "",
        "## Memory, file descriptors and threads per service",
        "",
        *memory_table(result),
        "",
        "## Samples",
        "",
        *samples_table(result),
        "",
        "## Requests",
        "",
        *traffic_table(result),
        "",
        "Time per scenario, from its tick to its last answer (an admin cycle includes a "
        f"{REVOCATION_WAIT_S:g} s wait before it uses the key it revoked):",
        "",
        *scenario_table(result),
        "",
        "## Ledger",
        "",
        f"Expected {ledger['expected']} records, recorded {ledger['recorded']}: "
        f"{_equal(ledger['expected'], ledger['recorded'])}. Tokens of the records with status "
        f"ok: {tokens['ledger']} in the ledger, {tokens['clients']} in the usage the clients "
        f"were given ({_equal(tokens['ledger'], tokens['clients'])}).",
        "",
        f"Streams the client abandoned after two chunks: {cancelled['n']} records with status "
        f"cancelled, billed {cancelled['mean']:g} completion tokens on average and at most "
        f"{cancelled['max']} of the {cfg['disconnect_max_tokens']} they asked for.",
        "",
        *ledger_table(result),
        "",
        *status_table(result),
    ]
    if traffic["unexpected"]:
        lines += ["", "## Unexpected answers (first ones)", ""]
        lines += [f"- {u['kind']}: {u['status']} {u['detail']}" for u in traffic["unexpected"]]
    return "\n".join(lines) + "\n"
