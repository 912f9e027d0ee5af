"""The gateway benchmark's files: gateway.json, gateway.md and its section of
docs/PERFORMANCE.md (between the gateway markers; the prose around them is left alone).

No plotting here (see `bench.gateway_plots`), so that the rendering can be tested without
matplotlib.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.gateway_stats import DIRECT, LITELLM
from bench.targets import Verdict

START = "<!-- gateway:start -->"
END = "<!-- gateway:end -->"
PROCESSES = ("edge", "auth", "metering", "engine")
CHARTS = ("gateway-throughput.png", "gateway-latency.png", "gateway-cpu.png")


def label(name: str, meta: Mapping[str, Any], litellm_version: str) -> str:
    kind, database = meta.get("kind"), meta.get("database")
    if kind == "direct":
        return "straight to the stand-in"
    if kind == "litellm":
        return f"LiteLLM proxy {litellm_version}"
    if kind == "byok":
        return f"Sluice BYOK, {'PostgreSQL' if database == 'postgres' else 'SQLite'}"
    if kind == "hosted":
        return f"Sluice hosted, {'PostgreSQL' if database == 'postgres' else 'SQLite'}"
    return name


def _ms(value: float | None, digits: int = 1, sign: bool = False) -> str:
    if value is None:
        return ""
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _errors(row: Mapping[str, Any]) -> str:
    if not row.get("error_count"):
        return "0"
    return (
        f"**{row['error_count']}** ("
        + ", ".join(f"{k}: {v}" for k, v in row["errors"].items())
        + ")"
    )


def _cpu_cells(name: str, row: Mapping[str, Any]) -> list[str]:
    cpu = row.get("cpu_ms_per_request") or {}
    if name == LITELLM:
        return ["", "", "", "", _ms(cpu.get("litellm"), 2)]
    if name == DIRECT:
        return ["", "", "", "", _ms(cpu.get("stand-in"), 2)]
    cells = [_ms(cpu.get(p), 2) for p in PROCESSES]
    total = sum(cpu.get(p, 0.0) for p in PROCESSES)
    return [*cells, _ms(total, 2)]


def main_table(results: Mapping[str, Any]) -> list[str]:
    rows = results.get("rows", {})
    meta = results.get("targets", {})
    version = results.get("litellm_version", "?")
    concurrencies = sorted({int(c) for by_c in rows.values() for c in by_c})
    out = [
        "| path | c | req/s | p50 (ms) | p99 (ms) | added p50 (ms) | added p99 (ms) | errors "
        "| CPU ms/req: edge | auth | metering | engine | total |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for c in concurrencies:
        for name in meta:
            row = rows.get(name, {}).get(str(c))
            if not row:
                continue
            lat = row.get("latency_ms") or {}
            added = row.get("added_ms") or {}
            out.append(
                f"| {label(name, meta[name], version)} | {c} | {row['req_s']:.0f} "
                f"| {_ms(lat.get('p50'))} | {_ms(lat.get('p99'))} "
                f"| {_ms(added.get('p50'), sign=True)} | {_ms(added.get('p99'), sign=True)} "
                f"| {_errors(row)} | " + " | ".join(_cpu_cells(name, row)) + " |"
            )
    return out


def hosted_table(results: Mapping[str, Any]) -> list[str]:
    hosted = results.get("hosted_gateway") or {}
    if not hosted:
        return ["_The hosted gateway was not measured in this run._"]
    out = [
        "| database | calls each way | HTTP p50 / p99 (ms) | engine gRPC p50 / p99 (ms) "
        "| added p50 / p99 (ms) |",
        "|---|---:|---:|---:|---:|",
    ]
    for database, g in hosted.items():
        h, d = g["http_ms"], g["direct_ms"]
        out.append(
            f"| {database} | {g.get('samples', '?')} | {h['p50']:.2f} / {h['p99']:.2f} "
            f"| {d['p50']:.2f} / {d['p99']:.2f} "
            f"| **{g['added_p50_ms']:+.2f}** / {g['added_p99_ms']:+.2f} |"
        )
    return out


def targets_table(verdicts: Sequence[Verdict]) -> list[str]:
    out = ["| | target | measured | status |", "|---|---|---|---|"]
    for v in verdicts:
        out.append(f"| {v.key} | {v.target} | {v.measured} | **{v.status()}** |")
    return out


def _shares(entries: Sequence[Mapping[str, Any]], n: int, cpu_ms: float | None) -> str:
    parts = []
    for e in entries[:n]:
        ms = f", {e['share'] * cpu_ms:.2f} ms" if cpu_ms else ""
        parts.append(f"{e['name']} {e['share'] * 100:.0f}%{ms}")
    return "; ".join(parts)


def profile_tables(results: Mapping[str, Any], n: int = 5) -> list[str]:
    profiles = results.get("profiles") or {}
    if not profiles:
        return ["_No profiles in this run._"]
    out = [
        "Shares of py-spy's samples; ms = share x the process's CPU per request (from /proc) "
        "in the same phase. Other threads: samples off the event loop's thread (SQLite's "
        "writer, thread pools). Running package: where the sampled thread was executing; on "
        "the stack: every library the sample was under (a sample in httpcore called through "
        "httpx counts for both). Innermost function of ours: the deepest `services/` frame; "
        "a service's `main` or `run_service` there means no request code of ours was on the "
        "stack (the server, the event loop).",
        "",
        "| run | process | CPU ms/req | other threads | running package | on the stack "
        "| innermost function of ours |",
        "|---|---|---:|---:|---|---|---|",
    ]
    for key, prof in profiles.items():
        for proc, s in prof.get("processes", {}).items():
            if not s.get("samples"):
                out.append(f"| {key} | {proc} | {_ms(s.get('cpu_ms_per_request'), 2)} | | | | |")
                continue
            cpu = s.get("cpu_ms_per_request")
            others = s.get("threads", {}).get("other threads", 0) / s["samples"]
            out.append(
                f"| {key} | {proc} | {_ms(cpu, 2)} | {others * 100:.0f}% "
                f"| {_shares(s['by_package'], n, cpu)} "
                f"| {_shares(s['by_package_on_stack'], n, cpu)} "
                f"| {_shares(s['by_our_function'], n, None)} |"
            )
    return out


def _machine_line(results: Mapping[str, Any]) -> str:
    m = results.get("machine", {})
    cfg = results.get("config", {})
    kind = "quick run (development numbers)" if cfg.get("quick") else "full run"
    start, end = m.get("load_average_start"), m.get("load_average_end")
    load_text = f", 1-min load average {start[0]:.2f} at start" if start else ""
    if start and end:
        load_text += f" and {end[0]:.2f} at end"
    loads = [p["load_1min"][0] for p in results.get("phases", []) if p.get("load_1min")]
    if loads:
        load_text += f" ({min(loads):.2f}-{max(loads):.2f} during the phases)"
    duration = results.get("duration_s")
    took = f"; the run took {duration:.0f} s" if duration else ""
    return (
        f"_{kind}, {m.get('date', '?')}: {m.get('cpu_model', '?')}, {m.get('cpu_count', '?')} "
        f"cores; Python {m.get('python', '?')}; LiteLLM {results.get('litellm_version', '?')}; "
        f"commit `{m.get('git_commit', '?')}`{load_text}; {cfg.get('rounds', '?')} rounds of "
        f"{cfg.get('duration_s', '?')} s phases per path and concurrency{took}._"
    )


def render_section(results: Mapping[str, Any], verdicts: Sequence[Verdict]) -> str:
    charts = " ".join(f"![{c.removesuffix('.png')}](img/{c})" for c in CHARTS)
    lines = [
        _machine_line(results),
        "",
        charts,
        "",
        "#### Targets",
        "",
        *targets_table(verdicts),
        "",
        "#### Every path at each concurrency",
        "",
        *main_table(results),
        "",
        "#### Hosted path: the gateway against the engine called directly (c=1)",
        "",
        *hosted_table(results),
        "",
        "#### Where the BYOK path's time goes (py-spy)",
        "",
        *profile_tables(results),
    ]
    return "\n".join(lines)


def replace_between_markers(document: str, section: str) -> str:
    """`document` with everything between the gateway markers replaced by `section`; appended
    at the end with the markers where it has none."""
    body = f"{START}\n{section.strip()}\n{END}"
    start = document.find(START)
    end = document.find(END, start + len(START)) if start >= 0 else -1
    if start < 0 or end < 0:
        return document.rstrip("\n") + "\n\n" + body + "\n"
    return document[:start] + body + document[end + len(END) :]


def write(
    results: dict[str, Any], verdicts: Sequence[Verdict], bench_dir: Path, performance: Path
) -> list[Path]:
    """gateway.json and gateway.md under `bench_dir`, and the section of `performance`."""
    bench_dir.mkdir(parents=True, exist_ok=True)
    results = {**results, "verdicts": [v.as_dict() for v in verdicts]}
    data = bench_dir / "gateway.json"
    data.write_text(json.dumps(results, indent=1) + "\n")
    section = render_section(results, verdicts)
    md = bench_dir / "gateway.md"
    md.write_text(
        "# Gateway benchmark (generated by `make bench`)\n\n"
        + section.replace("](img/", "](../img/")
        + "\n"
    )
    if performance.exists():
        performance.write_text(replace_between_markers(performance.read_text(), section))
    return [data, md, performance]
