"""The soak's pure parts: which answers must leave a ledger record, the tally, the memory
summary, the verdicts and the report. No model, no stack (the /proc readers on this process)."""

from __future__ import annotations

import copy
import os
from typing import Any

import pytest

from bench.procfs import children, process_sample, service_name
from bench.soak_report import (
    KINDS,
    Tally,
    checks,
    expected_records,
    latency_summary,
    render_markdown,
    service_summary,
)


@pytest.mark.parametrize(
    ("kind", "status", "records"),
    [
        ("chat", 200, 1),
        ("chat_stream", 200, 1),
        ("completion", 200, 1),
        ("disconnect", 200, 1),  # cancelled, and billed for what was produced
        ("bad_key", 401, 0),
        ("invalid_body", 400, 0),  # refused before any hop
        ("too_big", 413, 0),
        ("unknown_model", 404, 1),  # the key is known: a "rejected" record
        ("context_too_long", 400, 1),  # refused by the engine after admission
        ("rate_limited", 200, 1),
        ("rate_limited", 429, 1),  # metering records the refusal
        ("over_budget", 429, 1),
        ("ip_denied", 403, 1),
        ("admin", 201, 0),
        ("revoked_key", 401, 0),
        ("usage", 200, 0),
    ],
)
def test_expected_records_follow_the_request_path(kind: str, status: int, records: int) -> None:
    assert expected_records(kind, status) == records


def test_answers_a_kind_does_not_expect_have_no_known_record() -> None:
    assert expected_records("chat", 500) is None
    assert expected_records("chat", 0) is None  # a transport error
    assert expected_records("bad_key", 200) is None
    assert expected_records("soak_error", 0) is None


def test_every_recording_answer_names_its_ledger_status() -> None:
    for name, kind in KINDS.items():
        for status, records in kind.records.items():
            if records:
                assert kind.ledger_status[status] in ("ok", "cancelled", "rejected"), name


def test_tally_counts_records_per_key_and_status_and_keeps_the_unexpected() -> None:
    t = Tally()
    t.add("chat", 200, "key_a", tokens=30)
    t.add("chat_stream", 200, "key_a", tokens=20)
    t.add("disconnect", 200, "key_a")
    t.add("bad_key", 401)
    t.add("unknown_model", 404, "key_a")
    t.add("rate_limited", 429, "key_b")
    t.add("rate_limited", 200, "key_b", tokens=5)
    t.add("chat", 502, "key_a", detail="engine unavailable")
    assert t.sent == 8
    assert t.expected_total == 6
    assert t.per_key == {"key_a": 4, "key_b": 2}
    assert t.per_status == {"ok": 3, "cancelled": 1, "rejected": 2}
    assert t.ok_tokens == 55
    assert t.unexpected_total == 1 and t.server_errors() == 1 and t.indeterminate == 1
    t.add("admin", 504)  # the admin API never leaves a record, whatever it answers
    assert t.unexpected_total == 2 and t.indeterminate == 1
    assert t.unexpected[0] == {"kind": "chat", "status": 502, "detail": "engine unavailable"}
    assert t.to_json()["by_kind"]["rate_limited"] == {"200": 1, "429": 1}


def _sample(t: float, rss: int, fds: int, phase: str = "run") -> dict[str, Any]:
    edge = {"pid": 7, "rss_kib": rss, "anon_kib": rss // 2, "fds": fds, "threads": 9}
    return {
        "t_s": t,
        "phase": phase,
        "sent": int(t),
        "open_reservations": 0,
        "load_1m": 1.5,
        "mem_available_mib": 9000,
        "services": {"edge": edge},
    }


def test_service_summary_separates_the_second_half_growth() -> None:
    samples = [_sample(0, 1000, 30), _sample(30, 1500, 40), _sample(60, 1600, 31)]
    s = service_summary(samples, "edge")
    assert s["rss_start_kib"] == 1000 and s["rss_end_kib"] == 1600 and s["rss_max_kib"] == 1600
    assert s["rss_growth_kib"] == 600 and s["rss_growth_pct"] == 60.0
    assert s["rss_second_half_growth_kib"] == 100
    assert s["anon_start_kib"] == 500 and s["anon_growth_kib"] == 300
    assert s["anon_second_half_growth_kib"] == 50
    assert (s["fds_start"], s["fds_end"], s["fds_max"]) == (30, 31, 40)
    assert service_summary(samples, "engine") == {}


def test_latency_summary() -> None:
    assert latency_summary([]) == {"n": 0}
    s = latency_summary([0.1, 0.2, 0.3])
    assert s == {"n": 3, "p50_ms": 200.0, "p95_ms": 290.0, "max_ms": 300.0}


def _result() -> dict[str, Any]:
    tally = Tally()
    tally.add("chat", 200, "key_a", tokens=12)
    tally.add("bad_key", 401)
    samples = [_sample(0, 1000, 30, "start"), _sample(60, 1010, 30, "end")]
    return {
        "config": {
            "duration_s": 60.0,
            "warmup_s": 5.0,
            "rate": 2.0,
            "concurrency": 16,
            "max_tokens": 16,
            "disconnect_max_tokens": 64,
            "database": "sqlite",
        },
        "machine": {"date": "2026-01-01", "git_commit": "abc", "cpu_count": 2},
        "load_average_end": [1.0, 1.0, 1.0],
        "samples": samples,
        "summary": {"edge": service_summary(samples, "edge")},
        "traffic": {
            **tally.to_json(),
            "phases": {
                "warmup": {"ticks": 10, "answers": 10},
                "run": {"ticks": 120, "answers": 125, "elapsed_s": 60.0},
                "drain_s": 0.2,
            },
            "scenarios": {"chat": latency_summary([0.1, 0.2])},
            "server_errors": 0,
        },
        "reservations": {"open_end": 0, "reserved_tokens_end": 0, "drain_s": 0.2},
        "ledger": {
            "expected": 1,
            "recorded": 1,
            "per_key": [{"role": "main", "key_id": "key_a", "expected": 1, "recorded": 1}],
            "keys_mismatched": 0,
            "by_status": {"ok": 1},
            "ok_tokens": {"ledger": 12, "clients": 12},
            "cancelled_completion_tokens": {"n": 0, "max": 0, "mean": 0},
        },
    }


def test_checks_pass_then_fail_on_each_condition() -> None:
    good = _result()
    assert all(c["ok"] for c in checks(good))

    open_left = copy.deepcopy(good)
    open_left["reservations"]["open_end"] = 1
    lost = copy.deepcopy(good)
    lost["ledger"]["recorded"] = 0
    misplaced = copy.deepcopy(good)
    misplaced["ledger"]["keys_mismatched"] = 2
    failed = copy.deepcopy(good)
    failed["traffic"]["unexpected_total"] = 1
    for bad, name in (
        (open_left, "open reservations return to zero"),
        (lost, "ledger records equal the requests that must leave one"),
        (misplaced, "ledger records equal the requests that must leave one"),
        (failed, "no 5xx and no unexpected answer"),
    ):
        assert [c["name"] for c in checks(bad) if not c["ok"]] == [name]


def test_render_markdown_shows_the_verdict_and_the_tables() -> None:
    result = _result()
    result["checks"] = checks(result)
    text = render_markdown(result)
    assert text.startswith("# Soak: 60 s of mixed traffic — PASS")
    assert "| edge | 7 | 1.0 | 1.0 |" in text
    assert "Expected 1 records, recorded 1: equal" in text
    assert "| main | key_a | 1 | 1 | equal |" in text
    assert "| chat | chat completion (openai SDK) | 1 | 200: 1 | 1 |" in text
    assert "Unexpected answers" not in text

    result["ledger"]["recorded"] = 0
    result["checks"] = checks(result)
    assert "— FAIL" in render_markdown(result)


def test_proc_readers_on_this_process() -> None:
    me = process_sample(os.getpid())
    assert me is not None and me["rss_kib"] >= me["anon_kib"] > 0
    assert me["fds"] > 0 and me["threads"] >= 1
    assert os.getpid() in children(os.getppid())
    assert service_name(os.getpid()) == f"pid-{os.getpid()}"  # not a `-m services.X`
    assert process_sample(2**22 + 1) is None
