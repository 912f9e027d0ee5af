"""The gateway benchmark's pure parts: the phase schedule, the rows and their added latency, the
verdicts, the LiteLLM config, py-spy's collapsed stacks, the report's markdown and the stand-in's
request parsing. Nothing is installed or started here (no LiteLLM, no stack, no py-spy)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from bench import gateway_report, gateway_stats, litellm_proxy, profiles, upstream
from bench.closed_loop import error_kind


def test_schedule_rotates_the_targets_between_phases() -> None:
    order = gateway_stats.schedule(["a", "b", "c"], [1, 16], rounds=2)
    assert len(order) == 12
    phases = [[name for _, _, name in order[i : i + 3]] for i in range(0, 12, 3)]
    # Rotated by one more each time; the second round runs the other way round.
    assert phases == [["a", "b", "c"], ["b", "c", "a"], ["a", "c", "b"], ["c", "b", "a"]]
    assert [(r, c) for r, c, _ in order[:3]] == [(0, 1)] * 3
    assert [(r, c) for r, c, _ in order[9:]] == [(1, 16)] * 3
    assert {name for _, c, name in order if c == 16} == {"a", "b", "c"}
    assert gateway_stats.rotated([], 3) == []
    assert gateway_stats.rotated(["x", "y"], 3) == ["y", "x"]


def _phase(latencies: list[float], wall: float, errors: dict[str, int] | None = None, **cpu: float):
    return {"latencies_ms": latencies, "errors": errors or {}, "wall_s": wall, "cpu_s": cpu}


def test_summarize_pools_phases() -> None:
    row = gateway_stats.summarize(
        [
            _phase([1.0, 2.0, 3.0], 1.0, edge=0.003, metering=0.006),
            _phase([4.0, 5.0], 1.0, {"HTTP 429": 1}, edge=0.003, metering=0.0),
        ]
    )
    assert row["answered"] == 5 and row["requests"] == 6 and row["error_count"] == 1
    assert row["req_s"] == pytest.approx(2.5)
    assert row["rounds_req_s"] == [3.0, 2.0]
    assert row["latency_ms"]["p50"] == 3.0
    assert row["latency_ms"]["max"] == 5.0
    # CPU per request counts refused requests too: they cost the gateway as well.
    assert row["cpu_ms_per_request"] == {"edge": pytest.approx(1.0), "metering": pytest.approx(1.0)}
    assert row["errors"] == {"HTTP 429": 1}


def test_summarize_without_answers() -> None:
    row = gateway_stats.summarize([_phase([], 1.0, {"timeout": 3})])
    assert row["latency_ms"] is None and row["req_s"] == 0.0 and row["error_count"] == 3


def _rows(**by_name: dict[str, dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    return by_name


def _row(p50: float, p99: float, req_s: float = 100.0, errors: int = 0, **extra: Any):
    return {
        "latency_ms": {"p50": p50, "p99": p99},
        "req_s": req_s,
        "error_count": errors,
        "errors": {"HTTP 429": errors} if errors else {},
        **extra,
    }


def test_added_latency_is_the_difference_of_percentiles() -> None:
    rows = _rows(
        direct={"1": _row(1.0, 2.0)},
        litellm={"1": _row(18.0, 30.0)},
        **{"hosted-sqlite": {"1": _row(50.0, 60.0, compare=False)}},
    )
    gateway_stats.add_added_latency(rows)
    assert rows["litellm"]["1"]["added_ms"] == {"p50": 17.0, "p99": 28.0}
    assert rows["direct"]["1"]["added_ms"] is None
    assert rows["hosted-sqlite"]["1"]["added_ms"] is None


def _results(byok_c1: dict, byok_c64: dict, litellm_c64: dict, hosted_added: float | None):
    rows = {
        "direct": {"1": _row(1.0, 2.0), "64": _row(90.0, 200.0, 700.0)},
        "litellm": {"1": _row(18.0, 40.0, 55.0), "64": litellm_c64},
        "byok-sqlite": {"1": byok_c1, "64": byok_c64},
    }
    gateway_stats.add_added_latency(rows)
    hosted = {}
    if hosted_added is not None:
        hosted["sqlite"] = {
            "added_p50_ms": hosted_added,
            "http_ms": {"p50": 50.0 + hosted_added},
            "direct_ms": {"p50": 50.0},
        }
    return {
        "databases": ["sqlite"],
        "targets": {
            "direct": {"kind": "direct"},
            "litellm": {"kind": "litellm"},
            "byok-sqlite": {"kind": "byok", "database": "sqlite"},
        },
        "rows": rows,
        "hosted_gateway": hosted,
    }


def test_verdicts_met() -> None:
    results = _results(
        byok_c1=_row(4.5, 9.0, 200.0),
        byok_c64=_row(150.0, 400.0, 300.0),
        litellm_c64=_row(700.0, 2600.0, 82.0),
        hosted_added=2.5,
    )
    verdicts = {v.key: v for v in gateway_stats.evaluate(results)}
    assert set(verdicts) == {"g1-sqlite", "g2-sqlite", "g3-sqlite"}
    assert verdicts["g1-sqlite"].met is True
    assert verdicts["g1-sqlite"].measured == "+3.50 ms vs LiteLLM +17.00 ms"
    assert verdicts["g2-sqlite"].met is True
    assert "(3.66x)" in verdicts["g2-sqlite"].measured
    assert verdicts["g3-sqlite"].met is True


def test_verdicts_not_met() -> None:
    results = _results(
        byok_c1=_row(13.3, 20.0, 74.0),  # +12.3 ms: over 4 ms
        byok_c64=_row(300.0, 4100.0, 300.0, errors=2),  # 3.66x, but p99 above and errors
        litellm_c64=_row(700.0, 2600.0, 82.0),
        hosted_added=5.4,
    )
    verdicts = {v.key: v for v in gateway_stats.evaluate(results)}
    assert [verdicts[k].met for k in ("g1-sqlite", "g2-sqlite", "g3-sqlite")] == [False] * 3
    assert "2 errors" in verdicts["g2-sqlite"].measured


def test_throughput_alone_is_not_enough() -> None:
    results = _results(
        byok_c1=_row(2.0, 3.0),
        byok_c64=_row(100.0, 200.0, 200.0),  # 2.4x LiteLLM
        litellm_c64=_row(700.0, 2600.0, 82.0),
        hosted_added=None,
    )
    verdicts = {v.key: v for v in gateway_stats.evaluate(results)}
    assert verdicts["g2-sqlite"].met is False
    assert verdicts["g3-sqlite"].met is None
    assert verdicts["g3-sqlite"].status() == "not measured"


def test_litellm_config_points_at_the_stand_in() -> None:
    config = litellm_proxy.render_config(
        "gpt-4o-mini", "gpt-4o-mini", "http://127.0.0.1:9/v1", "sk-proj-x", "sk-master"
    )
    (entry,) = config["model_list"]
    assert entry["model_name"] == "gpt-4o-mini"
    assert entry["litellm_params"] == {
        "model": "openai/gpt-4o-mini",
        "api_base": "http://127.0.0.1:9/v1",
        "api_key": "sk-proj-x",
    }
    assert config["general_settings"] == {"master_key": "sk-master"}
    assert "database_url" not in json.dumps(config)


def test_litellm_env_has_no_database_and_no_network_fetch() -> None:
    env = litellm_proxy.proxy_env({"DATABASE_URL": "postgres://x", "PATH": "/bin"})
    assert "DATABASE_URL" not in env
    assert env["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
    assert env["PATH"] == "/bin"


_MAIN = "_run_module_as_main (<frozen runpy>);main (services/edge/main.py);run (asyncio/runners.py)"
COLLAPSED = "\n".join(
    [
        f"{_MAIN} 50",
        f"{_MAIN};admit (services/edge/governance.py);__call__ (grpc/aio/_call.py) 30",
        f"{_MAIN};attempt (services/edge/providers/base.py);send (httpx/_client.py);"
        "handle (httpcore/_async/http11.py) 15",
        "_bootstrap (threading.py);run (threading.py) 5",
        "not a stack line",
    ]
)


def test_profile_summary_of_collapsed_stacks() -> None:
    s = profiles.summarize(COLLAPSED)
    assert s["samples"] == 100
    by_package = {e["name"]: e["share"] for e in s["by_package"]}
    assert by_package == {
        profiles.EVENT_LOOP: 0.5,
        "grpc": 0.3,
        "httpcore": 0.15,
        "threading": 0.05,
    }
    on_stack = {e["name"]: e["share"] for e in s["by_package_on_stack"]}
    assert on_stack == {"grpc": 0.3, "httpx": 0.15, "httpcore": 0.15}
    assert profiles.EVENT_LOOP not in on_stack and "services" not in on_stack
    ours = {e["name"]: e["samples"] for e in s["by_our_function"]}
    assert ours["main (services/edge/main.py)"] == 50
    assert ours["admit (services/edge/governance.py)"] == 30
    assert s["threads"] == {"main thread (event loop)": 95, "other threads": 5}
    assert profiles.per_request_ms(s, rate_hz=100, requests=10) == pytest.approx(100.0)
    assert profiles.per_request_ms(s, rate_hz=100, requests=0) is None


def test_frame_helpers() -> None:
    assert profiles.frame_file("run (asyncio/runners.py)") == "asyncio/runners.py"
    assert profiles.package("x (sqlalchemy/engine/base.py)") == "sqlalchemy"
    assert profiles.package("_run_code (<frozen runpy>)") == "<frozen runpy>"
    assert profiles.package("emit (logging/__init__.py)") == "logging"
    assert profiles.package("f (json.py)") == "json"


def _full_results() -> dict[str, Any]:
    results = _results(
        byok_c1=_row(13.3, 20.0, 74.0, cpu_ms_per_request={"edge": 3.0, "metering": 3.5}),
        byok_c64=_row(300.0, 4100.0, 80.0),
        litellm_c64=_row(700.0, 2600.0, 82.0, cpu_ms_per_request={"litellm": 13.0}),
        hosted_added=5.4,
    )
    results["litellm_version"] = "1.108.5"
    results["config"] = {"quick": False, "rounds": 2, "duration_s": 5.0}
    results["machine"] = {"cpu_count": 2, "load_average_start": [0.5, 0.5, 0.5]}
    results["hosted_gateway"]["sqlite"].update(
        samples=200, added_p99_ms=4.0, http_ms={"p50": 55.4, "p99": 60.0},
        direct_ms={"p50": 50.0, "p99": 56.0},
    )  # fmt: skip
    results["profiles"] = {
        "sqlite-c1": {
            "processes": {"edge": {**profiles.summarize(COLLAPSED), "cpu_ms_per_request": 2.0}}
        }
    }
    return results


def test_report_renders_every_section() -> None:
    results = _full_results()
    verdicts = gateway_stats.evaluate(results)
    text = gateway_report.render_section(results, verdicts)
    assert "| straight to the stand-in | 1 |" in text
    assert "| LiteLLM proxy 1.108.5 | 64 | 82 |" in text
    assert "| Sluice BYOK, SQLite | 1 | 74 | 13.3 | 20.0 | +12.3 | +18.0 | 0 |" in text
    assert "**not met**" in text
    assert "| sqlite | 200 | 55.40 / 60.00 | 50.00 / 56.00 | **+5.40** / +4.00 |" in text
    assert "grpc 30%, 0.60 ms" in text
    assert "![gateway-throughput](img/gateway-throughput.png)" in text


def test_report_replaces_only_its_section(tmp_path: Any) -> None:
    doc = tmp_path / "PERFORMANCE.md"
    doc.write_text(f"# P\n\nprose\n\n{gateway_report.START}\nold\n{gateway_report.END}\n\nmore\n")
    results = _full_results()
    gateway_report.write(results, gateway_stats.evaluate(results), tmp_path / "bench", doc)
    text = doc.read_text()
    assert "old" not in text and text.startswith("# P\n\nprose\n") and text.endswith("more\n")
    saved = json.loads((tmp_path / "bench" / "gateway.json").read_text())
    assert [v["status"] for v in saved["verdicts"]] == ["not met", "not met", "not met"]
    assert "](../img/gateway-cpu.png)" in (tmp_path / "bench" / "gateway.md").read_text()
    assert gateway_report.replace_between_markers("a\n", "s").endswith(
        f"{gateway_report.START}\ns\n{gateway_report.END}\n"
    )


def test_error_kinds() -> None:
    assert error_kind(200, b'{"object": "chat.completion"}') is None
    assert error_kind(429, b"{}") == "HTTP 429"
    assert error_kind(200, b"{}") == "200 without a chat.completion"


# The stand-in's parsing, in process: what a request costs it must stay trivial, and it must
# answer keep-alive, Content-Length and chunked requests alike.


def test_stand_in_parses_heads_and_chunked_bodies() -> None:
    method, target, headers = upstream.parse_head(
        b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 2\r\nHost: x"
    )
    assert (method, target, headers["content-length"]) == ("POST", "/v1/chat/completions", "2")
    raw = b'4\r\n{"a"\r\n3\r\n:1}\r\n0\r\n\r\nNEXT'
    body, after = upstream.chunked_body(raw, 0) or (b"", 0)
    assert body == b'{"a":1}' and raw[after:] == b"NEXT"
    assert upstream.chunked_body(b'4\r\n{"a', 0) is None


def test_stand_in_answers() -> None:
    handler = upstream.Handler()
    ok = handler.answer("POST", "/v1/chat/completions", b'{"model": "m", "messages": []}')
    head, _, body = ok.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    answer = json.loads(body)
    assert answer["object"] == "chat.completion" and answer["usage"]["total_tokens"] == 11
    assert handler.answer("POST", "/v1/chat/completions", b"nope").startswith(b"HTTP/1.1 400")
    stream = b'{"messages": [], "stream": true}'
    assert handler.answer("POST", "/v1/chat/completions", stream).startswith(b"HTTP/1.1 400")
    assert handler.answer("GET", "/nowhere", b"").startswith(b"HTTP/1.1 404")


def test_stand_in_serves_keep_alive_requests_over_loopback() -> None:
    async def go() -> list[bytes]:
        loop = asyncio.get_running_loop()
        handler = upstream.Handler()
        server = await loop.create_server(lambda: upstream.Connection(handler), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = b'{"messages": []}'
        one = b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (
            len(body),
            body,
        )
        writer.write(one + one[:10])  # a whole request and the start of the next
        await writer.drain()
        writer.write(one[10:])
        await writer.drain()
        heads = []
        for _ in range(2):
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            heads.append(head.split(b"\r\n")[0])
        writer.close()
        server.close()
        await server.wait_closed()
        return heads

    assert asyncio.run(go()) == [b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK"]
