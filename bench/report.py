"""Turning a results dict into the files a reader sees: results.json and the generated section
of docs/PERFORMANCE.md (between the bench markers; the prose around them is left alone).

No plotting here (see `bench.plots`), so that the rendering can be tested without matplotlib.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench import constrained
from bench.targets import Verdict

START = "<!-- bench:start -->"
END = "<!-- bench:end -->"

DEFAULT_DOC = f"""# Performance

How fast Sluice serves the bundled model, measured by `make bench` (`python -m bench.run`) on one
machine in one run, beside onnxruntime-genai on the same exported files.

## Method

- **The stack** is started exactly as `make run` starts it (`sluice up`: edge, auth, metering and
  engine as four processes, SQLite in a temporary folder, `SLUICE_ENGINE_MAX_BATCH=32`, ONNX
  Runtime's default intra-op threads: one per core). The client is plain `httpx` in the same
  machine, streaming chat completions with `stream_options.include_usage`.
- **The workload**: one chat prompt of 41 tokens after the chat template, greedy decoding
  (`temperature=0`), `max_tokens=200`. This small model loops on that prompt without emitting
  EOS, so every request generates exactly 200 tokens. At concurrency C, C requests are released
  at the same instant (at C=1, several runs one after another); each concurrency is preceded by
  an unrecorded warm-up round.
- **The baselines** run onnxruntime-genai 0.18 on the same folder, with the decoder session given
  the same intra-op thread count as our engine: `og.Generator` with a static batch of N copies of
  the prompt (exactly 200 new tokens each), and `og.Engine` (genai's request scheduler) with 16
  requests submitted at once, `search.max_length` capped at 512 and its static batch limit
  (`engine.static_batching.max_batch_size`) raised to 16. With this export (no paged KV cache)
  og.Engine schedules static batches; "batches observed" says how many it formed for the 16
  requests (distinct first-token times). Baseline and stack runs
  alternate (ours C=1, genai 1, ours C=4, genai 4, ...), so that drift of the machine hits both.
- **The gateway cost** is the same one-token request sent 200 times through HTTP and 200 times
  straight to the engine's gRPC `Generate`, interleaved, one at a time.
- **Constrained decoding** (`bench/constrained.py`) is measured twice. Per decode step: the
  engine's scheduler in the benchmark's own process (the stack stopped), batch 1 and 16, greedy,
  32 steps per run, runs with every row under a JSON-schema grammar alternating with plain runs
  (6 of each, so that drift hits both), timed by the scheduler's step log. Throughput: 16
  requests released at once to the running engine's gRPC `Generate` (the edge does not pass
  response formats on yet), all plain, then 8 plain and 8 constrained, 6 rounds each,
  alternating. The constrained requests use
  a schema (an array of at least 500 short strings) that cannot close within 200 tokens, so every
  request on both sides runs exactly `max_tokens` and the rounds decode the same number of steps.

## What the numbers mean

- **aggregate tok/s**: all completion tokens of a round over the wall time from the first
  request sent to the last one finished, so queueing and prefill are included.
- **per-stream decode tok/s**: median over requests of (completion tokens - 1) / (last token
  time - first token time), as the client receives them.
- **TTFT**: time from sending a request to its first content chunk. For `og.Generator` it is the
  batch's prefill plus the first sampling step.
- **inter-token latency**: gaps between consecutive content chunks of a stream, pooled over all
  streams of that concurrency.
- **gateway added**: p50 (p99) of the HTTP path minus p50 (p99) of the direct gRPC path.
- **constrained decoding**: "ONNX Runtime" is the decode call, during which the masks are
  computed on a worker thread (so on two cores the two share the CPU); "host" is what the step
  spends outside it: waiting for masks that were not ready, then sampling (masked rows gather
  their allowed logits). "Added per step" is the host time of the constrained runs minus that of
  the plain ones, and that as a share of a plain step; "mask fill" is llguidance's work for all
  rows of a step, overlapped with the ONNX Runtime call.

## Targets

- (a) one stream through the full HTTP stack decodes at least as fast as `og.Generator` at
  batch 1;
- (b) 16 requests at once: aggregate tok/s including prefill at least 1.0x `og.Generator`'s
  static batch of 16 (including prefill) and at least 1.5x `og.Engine`; median TTFT at most
  800 ms and p95 at most 1.5 s;
- (c) the gateway (edge + auth + metering) adds at most 3 ms at p50;
- (d) greedy outputs at concurrency 16 equal the single-stream output, token for token.

The table below says which are met in the latest run; the machine is part of the result, so
read the numbers together with the machine line above them.

## Latest results

{START}
{END}
"""


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pair(spread: dict[str, float] | None, a: str, b: str, digits: int = 0) -> str:
    if not spread:
        return "-"
    return f"{spread[a]:.{digits}f} / {spread[b]:.{digits}f}"


def _machine_line(results: dict[str, Any]) -> str:
    m = results.get("machine", {})
    cfg = results.get("config", {})
    kind = "quick run (development numbers)" if cfg.get("quick") else "full run"
    start, end = m.get("load_average_start"), m.get("load_average_end")
    load_text = f", 1-min load average {start[0]:.2f} at start" if start else ""
    if start and end:
        load_text += f" and {end[0]:.2f} at end"
    return (
        f"_{kind}, {m.get('date', '?')}: {m.get('cpu_model', '?')}, {m.get('cpu_count', '?')} "
        f"cores, {_f(m.get('memory_gib'))} GiB; Python {m.get('python', '?')}, onnxruntime "
        f"{m.get('onnxruntime', '?')}, onnxruntime-genai {m.get('onnxruntime_genai', '?')}; "
        f"commit `{m.get('git_commit', '?')}`{load_text}; intra-op threads "
        f"{results.get('genai_threads', '?')} for both engines; the run took "
        f"{_f(results.get('duration_s'), 0)} s._"
    )


def _constrained_machine(results: dict[str, Any]) -> list[str]:
    """A machine line of its own when this part was measured apart from the rest."""
    m = (results.get("constrained") or {}).get("machine")
    if not m:
        return []
    start, end = m.get("load_average_start"), m.get("load_average_end")
    load_text = f", 1-min load average {start[0]:.2f} at start" if start else ""
    if start and end:
        load_text += f" and {end[0]:.2f} at end"
    return [
        f"_measured apart from the sections above (`python -m bench.run --constrained-only`), "
        f"{m.get('date', '?')}: {m.get('cpu_model', '?')}, {m.get('cpu_count', '?')} cores; "
        f"commit `{m.get('git_commit', '?')}`{load_text}._",
        "",
    ]


def _targets_table(verdicts: list[Verdict]) -> list[str]:
    rows = ["| | target | measured | status |", "|---|---|---|---|"]
    for v in verdicts:
        rows.append(f"| {v.key} | {v.target} | {v.measured} | **{v.status()}** |")
    return rows


def _ours_table(results: dict[str, Any]) -> list[str]:
    rows = [
        "| concurrency | requests | aggregate tok/s (incl. prefill) | per-stream decode tok/s "
        "| TTFT p50 / p95 (ms) | inter-token p50 / p95 (ms) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for c, s in sorted(results.get("ours", {}).items(), key=lambda kv: int(kv[0])):
        rows.append(
            f"| {c} | {s['requests']} | {_f(s['aggregate_tok_s'])} "
            f"| {_f(s['decode_tok_s_per_stream'])} | {_pair(s['ttft_ms'], 'p50', 'p95')} "
            f"| {_pair(s['itl_ms'], 'p50', 'p95', 1)} |"
        )
    return rows


def _rounds_note(results: dict[str, Any]) -> list[str]:
    """The spread of repeated single-stream rounds: a direct reading of the machine's noise."""
    single = results.get("ours", {}).get("1")
    if not single or len(single.get("rounds_tok_s", [])) < 2:
        return []
    rates = single["rounds_tok_s"]
    return [
        f"Single-stream rounds ranged {min(rates):.1f}-{max(rates):.1f} tok/s over "
        f"{len(rates)} runs; a wide range means other work shared the cores.",
        "",
    ]


def _generator_table(results: dict[str, Any]) -> list[str]:
    rows = [
        "| batch | prefill (ms) | decode tok/s per stream | decode tok/s, all rows "
        "| tok/s incl. prefill |",
        "|---:|---:|---:|---:|---:|",
    ]
    for b, g in sorted(results.get("genai_generator", {}).items(), key=lambda kv: int(kv[0])):
        rows.append(
            f"| {b} | {_f(g['prefill_ms'], 0)} | {_f(g['decode_tok_s_per_stream'])} "
            f"| {_f(g['decode_tok_s_aggregate'])} | {_f(g['tok_s_incl_prefill'])} |"
        )
    return rows


def _engine_table(results: dict[str, Any]) -> list[str]:
    e = results.get("genai_engine")
    if not e:
        return ["_og.Engine was not measured in this run._"]
    return [
        "| requests | configured max batch | batches observed | aggregate tok/s "
        "| TTFT p50 / p95 (ms) |",
        "|---:|---:|---:|---:|---:|",
        f"| {e['requests']} | {e['capabilities']['configured_max_batch_size']} "
        f"| {e['batches_observed']} | {_f(e['aggregate_tok_s'])} "
        f"| {_pair(e['ttft_ms'], 'p50', 'p95')} |",
    ]


def _gateway_table(results: dict[str, Any]) -> list[str]:
    g = results.get("gateway")
    if not g:
        return ["_The gateway was not measured in this run._"]
    h, d = g["http_ms"], g["direct_ms"]
    return [
        f"{g['samples']} one-token calls each way, interleaved.",
        "",
        "| path | p50 (ms) | p99 (ms) | mean (ms) |",
        "|---|---:|---:|---:|",
        f"| HTTP (edge, auth, metering, engine) | {h['p50']:.2f} | {h['p99']:.2f} "
        f"| {h['mean']:.2f} |",
        f"| engine gRPC, direct | {d['p50']:.2f} | {d['p99']:.2f} | {d['mean']:.2f} |",
        f"| **added by the gateway** | **{g['added_p50_ms']:+.2f}** "
        f"| **{g['added_p99_ms']:+.2f}** | {g['added_mean_ms']:+.2f} |",
    ]


def _byok_table(results: dict[str, Any]) -> list[str]:
    b = results.get("byok")
    if not b:
        return ["_The bring-your-own-key gateway was not measured in this run._"]
    rows = [
        f"{b['samples']} non-streaming calls to `openai/gpt-4o-mini` each way, interleaved, "
        "against a stand-in OpenAI upstream that answers at once; added = the stack's "
        "percentile minus the direct call's.",
        "",
        "| path | p50 (ms) | p99 (ms) | added p50 (ms) | added p99 (ms) |",
        "|---|---:|---:|---:|---:|",
        f"| straight to the stand-in | {b['direct_ms']['p50']:.2f} | {b['direct_ms']['p99']:.2f} "
        "| | |",
    ]
    labels = {
        "before": f"before the move (`{b['before_commit'][:10]}`: edge → engine → provider)",
        "after": "after the move (this checkout: edge → provider)",
    }
    for name, label in labels.items():
        if name in b:
            g = b[name]
            rows.append(
                f"| {label} | {g['http_ms']['p50']:.2f} | {g['http_ms']['p99']:.2f} "
                f"| **{g['added_p50_ms']:+.2f}** | **{g['added_p99_ms']:+.2f}** |"
            )
    if "before_missing" in b:
        rows += ["", f"_Before the move: not measured ({b['before_missing']})._"]
    return rows


def render_section(results: dict[str, Any], verdicts: list[Verdict]) -> str:
    """The markdown that goes between the markers (markers not included)."""
    cfg = results.get("config", {})
    prompt = results.get("prompt", {})
    out = results.get("outputs", {})
    lines = [
        _machine_line(results),
        "",
        "![aggregate throughput](img/throughput.png) ![time to first token](img/ttft.png)",
        "",
        "### Targets",
        "",
        *_targets_table(verdicts),
        "",
        f"### Sluice over HTTP, streaming ({prompt.get('prompt_tokens', '?')}-token prompt, "
        f"{cfg.get('max_tokens', '?')} new tokens, greedy)",
        "",
        *_ours_table(results),
        "",
        *_rounds_note(results),
        "### onnxruntime-genai `og.Generator`, static batch",
        "",
        *_generator_table(results),
        "",
        "### onnxruntime-genai `og.Engine`, requests submitted at once",
        "",
        *_engine_table(results),
        "",
        "### Gateway cost",
        "",
        *_gateway_table(results),
        "",
        "### Bring-your-own-key gateway, before and after the provider backends moved to the edge",
        "",
        *_byok_table(results),
        "",
        "### Constrained decoding",
        "",
        *_constrained_machine(results),
        *constrained.render(results.get("constrained")),
        "",
        "### Outputs",
        "",
        f"At concurrency {out.get('concurrency', '-')}, {out.get('compared', 0)} greedy "
        f"completions compared with the single-stream one: "
        f"{'all equal' if out.get('all_equal') else 'mismatched ' + str(out.get('mismatched'))}. "
        f"og.Generator batch 1 produced the same text as Sluice: "
        f"{out.get('genai_batch1_equal', '-')}.",
    ]
    return "\n".join(lines)


def replace_between_markers(document: str, section: str) -> str:
    """`document` with everything between the markers replaced by `section`.

    A document without the markers gets them, with the section, appended at its end.
    """
    body = f"{START}\n{section.strip()}\n{END}"
    start = document.find(START)
    end = document.find(END, start + len(START)) if start >= 0 else -1
    if start < 0 or end < 0:
        return document.rstrip("\n") + "\n\n" + body + "\n"
    return document[:start] + body + document[end + len(END) :]


def write_performance_doc(path: Path, section: str) -> None:
    """Rewrites the generated section of `path`, creating the file with its method prose first."""
    document = path.read_text() if path.exists() else DEFAULT_DOC
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(replace_between_markers(document, section))


def write_results(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, sort_keys=False) + "\n")
