"""The benchmark's pure parts: percentile and summary math, target verdicts, and the markdown
written between the PERFORMANCE.md markers. No model, no stack."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.constrained import (
    compare_steps,
    render,
    step_summary,
    throughput_summary,
)
from bench.metrics import (
    StreamRecord,
    gateway_summary,
    outputs_agree,
    percentile,
    round_throughput,
    summarize_concurrency,
)
from bench.report import (
    DEFAULT_DOC,
    END,
    START,
    render_section,
    replace_between_markers,
    write_performance_doc,
)
from bench.targets import evaluate


def test_percentile_interpolates_like_numpy() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 95) == pytest.approx(3.85)
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def _stream(sent: float, first: float, gap: float, tokens: int, text: str = "x") -> StreamRecord:
    chunks = [first + i * gap for i in range(tokens)]
    return StreamRecord(
        sent=sent,
        done=chunks[-1] + 0.001,
        chunk_times=chunks,
        completion_tokens=tokens,
        prompt_tokens=41,
        finish_reason="length",
        text=text,
    )


def test_stream_record_timings() -> None:
    r = _stream(sent=10.0, first=10.1, gap=0.01, tokens=11)
    assert r.ttft_s == pytest.approx(0.1)
    assert r.decode_tok_s == pytest.approx(100.0)  # 10 tokens after the first in 0.1 s
    assert r.gaps_s == pytest.approx([0.01] * 10)
    raw = r.raw(origin=10.0)
    assert raw["sent_ms"] == 0.0 and raw["chunk_ms"][0] == pytest.approx(100.0)
    assert StreamRecord(sent=0.0, chunk_times=[1.0], completion_tokens=1).decode_tok_s is None


def test_round_throughput_includes_queueing_and_prefill() -> None:
    a = _stream(sent=0.0, first=0.5, gap=0.1, tokens=10)  # done at 1.401
    b = _stream(sent=0.1, first=1.0, gap=0.1, tokens=10)  # done at 1.901
    out = round_throughput([a, b])
    assert out["completion_tokens"] == 20
    assert out["wall_s"] == pytest.approx(1.901)
    assert out["tok_s"] == pytest.approx(20 / 1.901)


def test_summarize_concurrency_pools_requests_and_takes_median_round() -> None:
    rounds = [
        [_stream(0.0, 0.1, 0.01, 11)],
        [_stream(0.0, 0.2, 0.02, 11)],
        [_stream(0.0, 0.3, 0.04, 11)],
    ]
    s = summarize_concurrency(1, rounds)
    assert s["rounds"] == 3 and s["requests"] == 3 and s["completion_tokens"] == 33
    assert s["aggregate_tok_s"] == pytest.approx(sorted(s["rounds_tok_s"])[1])
    assert s["decode_tok_s_per_stream"] == pytest.approx(50.0)  # median of 100, 50, 25
    assert s["ttft_ms"]["p50"] == pytest.approx(200.0)
    assert s["itl_ms"]["n"] == 30 and s["itl_ms"]["p50"] == pytest.approx(20.0)
    assert s["finish_reasons"] == ["length"]


def test_gateway_summary_subtracts_percentiles() -> None:
    http = [10.0 + i * 0.1 for i in range(100)]
    direct = [8.0 + i * 0.1 for i in range(100)]
    g = gateway_summary(http, direct)
    assert g["added_p50_ms"] == pytest.approx(2.0)
    assert g["added_p99_ms"] == pytest.approx(2.0)
    assert g["http_ms"]["n"] == 100


def test_outputs_agree_reports_where_texts_differ() -> None:
    assert outputs_agree("abc", ["abc", "abc"])["all_equal"] is True
    out = outputs_agree("abcdef", ["abcdef", "abXdef"])
    assert out["all_equal"] is False
    assert out["mismatched"] == [1] and out["first_difference_at_char"] == 2
    assert outputs_agree("abc", ["ab"])["first_difference_at_char"] == 2
    assert outputs_agree("abc", [])["all_equal"] is False


def _results(**overrides: object) -> dict:
    ttft = {"p50": 600.0, "p95": 1200.0, "mean": 700.0, "n": 16}
    itl = {"p50": 30.0, "p95": 60.0, "mean": 35.0, "n": 3184}
    row = {
        "requests": 16,
        "aggregate_tok_s": 400.0,
        "decode_tok_s_per_stream": 30.0,
        "ttft_ms": ttft,
        "itl_ms": itl,
    }
    results: dict = {
        "config": {"quick": False, "max_tokens": 200},
        "machine": {"cpu_model": "Test CPU", "cpu_count": 2, "load_average_start": [0.5]},
        "prompt": {"prompt_tokens": 41},
        "ours": {
            "1": {**row, "requests": 5, "aggregate_tok_s": 120.0, "decode_tok_s_per_stream": 150.0},
            "16": row,
        },
        "genai_generator": {
            "1": {
                "prefill_ms": 60.0,
                "decode_tok_s_per_stream": 140.0,
                "decode_tok_s_aggregate": 140.0,
                "tok_s_incl_prefill": 120.0,
            },
            "16": {
                "prefill_ms": 900.0,
                "decode_tok_s_per_stream": 20.0,
                "decode_tok_s_aggregate": 320.0,
                "tok_s_incl_prefill": 300.0,
            },
        },
        "genai_engine": {
            "requests": 16,
            "capabilities": {"configured_max_batch_size": 16},
            "batches_observed": 4,
            "aggregate_tok_s": 250.0,
            "ttft_ms": ttft,
        },
        "gateway": {
            "samples": 200,
            "http_ms": {"p50": 12.0, "p99": 20.0, "mean": 13.0},
            "direct_ms": {"p50": 10.0, "p99": 15.0, "mean": 10.5},
            "added_p50_ms": 2.0,
            "added_p99_ms": 5.0,
            "added_mean_ms": 2.5,
        },
        "outputs": {"concurrency": 16, "compared": 16, "all_equal": True, "mismatched": []},
        "constrained": _constrained_section(),
        "duration_s": 180.0,
    }
    results.update(overrides)
    return results


def test_targets_met_not_met_and_not_measured() -> None:
    verdicts = {v.key: v for v in evaluate(_results())}
    assert list(verdicts) == ["a", "b1", "b2", "b3", "b4", "c", "d"]
    assert verdicts["a"].met is True  # 150 >= 140
    assert verdicts["b1"].met is True  # 400 >= 1.0 x 300
    assert verdicts["b2"].met is True  # 400 >= 1.5 x 250 = 375
    assert verdicts["b3"].met is True and verdicts["b4"].met is True
    assert verdicts["c"].met is True and verdicts["d"].met is True

    slow = _results(genai_engine={**_results()["genai_engine"], "aggregate_tok_s": 300.0})
    assert {v.key: v.met for v in evaluate(slow)}["b2"] is False  # 400 < 450

    quick = _results(
        ours={"1": _results()["ours"]["1"]},
        genai_engine=None,
        gateway=None,
        outputs={"concurrency": 4, "compared": 4, "all_equal": True, "mismatched": []},
    )
    by_key = {v.key: v for v in evaluate(quick)}
    assert by_key["a"].met is True
    assert all(by_key[k].met is None for k in ("b1", "b2", "b3", "b4", "c", "d"))
    assert by_key["b1"].status() == "not measured"
    assert "concurrency 4" in by_key["d"].measured

    bad = _results(
        gateway={**_results()["gateway"], "added_p50_ms": 3.5},
        outputs={"concurrency": 16, "compared": 16, "all_equal": False, "mismatched": [3]},
    )
    by_key = {v.key: v for v in evaluate(bad)}
    assert by_key["c"].met is False and by_key["d"].met is False
    assert by_key["d"].measured == "15/16 equal"


def test_render_section_tables() -> None:
    results = _results()
    text = render_section(results, evaluate(results))
    assert START not in text and END not in text
    assert "| b2 | 16 at once: aggregate tok/s >= 1.5x og.Engine" in text
    assert "400.0 vs 250.0 tok/s (1.60x)" in text
    assert "| 16 | 16 | 400.0 | 30.0 | 600 / 1200 | 30.0 / 60.0 |" in text
    assert "| 16 | 900 | 20.0 | 320.0 | 300.0 |" in text
    assert "| **added by the gateway** | **+2.00** | **+5.00** |" in text
    assert "Test CPU, 2 cores" in text and "full run" in text
    assert "img/throughput.png" in text


def test_replace_between_markers_keeps_the_prose_around() -> None:
    doc = f"# Title\n\nmethod\n\n{START}\nold numbers\n{END}\n\nfooter\n"
    new = replace_between_markers(doc, "new numbers\n")
    assert new == f"# Title\n\nmethod\n\n{START}\nnew numbers\n{END}\n\nfooter\n"
    assert replace_between_markers(new, "new numbers") == new  # idempotent

    appended = replace_between_markers("# Notes\n", "numbers")
    assert appended == f"# Notes\n\n{START}\nnumbers\n{END}\n"


def test_write_performance_doc_creates_then_rewrites(tmp_path: Path) -> None:
    path = tmp_path / "docs" / "PERFORMANCE.md"
    write_performance_doc(path, "numbers-1")
    created = path.read_text()
    assert created.startswith("# Performance") and "## Method" in created
    assert f"{START}\nnumbers-1\n{END}" in created
    assert DEFAULT_DOC.split(START)[0] == created.split(START)[0]

    path.write_text(created.replace("## Method", "## Method (edited by hand)"))
    write_performance_doc(path, "second")
    rewritten = path.read_text()
    assert "(edited by hand)" in rewritten
    assert "numbers-1" not in rewritten and f"{START}\nsecond\n{END}" in rewritten


def test_byok_before_and_after_table() -> None:
    summary = {
        "http_ms": {"p50": 9.0, "p99": 15.0, "mean": 9.5},
        "direct_ms": {"p50": 1.0, "p99": 2.0, "mean": 1.1},
        "added_p50_ms": 8.0,
        "added_p99_ms": 13.0,
        "added_mean_ms": 8.4,
    }
    after = {**summary, "http_ms": {"p50": 6.0, "p99": 9.0, "mean": 6.2}, "added_p50_ms": 5.0,
             "added_p99_ms": 7.0}  # fmt: skip
    byok = {
        "samples": 200,
        "before_commit": "4d4e89f401782e891513d6303465dbab1c70a4a3",
        "before": summary,
        "after": after,
        "direct_ms": {"p50": 1.0, "p99": 2.0, "mean": 1.1},
    }
    text = render_section(_results(byok=byok), evaluate(_results()))
    assert "| straight to the stand-in | 1.00 | 2.00 | | |" in text
    assert "before the move (`4d4e89f401`: edge → engine → provider) | 9.00 | 15.00 " in text
    assert "| **+8.00** | **+13.00** |" in text and "| **+5.00** | **+7.00** |" in text
    missing = {**byok, "before_missing": "no checkout"}
    del missing["before"]
    text = render_section(_results(byok=missing), evaluate(_results()))
    assert "_Before the move: not measured (no checkout)._" in text
    assert "_The bring-your-own-key gateway was not measured" in render_section(
        _results(), evaluate(_results())
    )


class _Step:
    def __init__(self, decode: float, wait: float, sample: float) -> None:
        self.decode_s, self.mask_wait_s, self.sample_s = decode, wait, sample


def _constrained_section() -> dict:
    plain = step_summary([_Step(0.030, 0.0, 0.001)] * 3)
    constrained = step_summary([_Step(0.031, 0.0002, 0.0018)] * 3)
    steps = {
        "steps_per_run": 64,
        "rounds": 3,
        "16": {
            "plain": plain,
            "constrained": constrained,
            "mask_fill_us": 850.0,
            **compare_steps(plain, constrained),
        },
    }
    plain_tp = {
        "requests": 16,
        "constrained": 0,
        "completion_tokens": 3200,
        "tok_s": 400.0,
        "rounds_tok_s": [390.0, 400.0, 410.0],
    }
    half = {**plain_tp, "constrained": 8, "tok_s": 380.0, "rounds_tok_s": [380.0, 370.0, 385.0]}
    return {
        "steps": steps,
        "throughput": {"plain": plain_tp, "half_constrained": half, "ratio": 0.95},
    }


def test_step_summary_takes_medians_and_separates_host_time() -> None:
    timings = [_Step(0.030, 0.0001, 0.001), _Step(0.040, 0.0003, 0.002), _Step(0.035, 0.0, 0.0)]
    s = step_summary(timings)
    assert s["steps"] == 3
    assert s["decode_ms"] == pytest.approx(35.0)
    assert s["mask_wait_ms"] == pytest.approx(0.1)
    assert s["sample_ms"] == pytest.approx(1.0)
    assert s["step_ms"] == pytest.approx(35.0)  # median of 31.1, 42.3, 35.0
    assert s["host_ms"] == pytest.approx(1.1)
    added = compare_steps({"host_ms": 1.0, "step_ms": 40.0}, {"host_ms": 3.0, "step_ms": 45.0})
    assert added == {"added_host_ms": 2.0, "added_step_pct": 5.0}


def test_throughput_summary_counts_every_request_from_first_send() -> None:
    records = [
        {
            "sent": 1.0,
            "done": 3.0,
            "completion_tokens": 200,
            "finish_reason": "length",
            "constrained": False,
        },
        {
            "sent": 1.1,
            "done": 5.0,
            "completion_tokens": 200,
            "finish_reason": "length",
            "constrained": True,
        },
    ]
    s = throughput_summary(records)
    assert s["wall_s"] == pytest.approx(4.0) and s["tok_s"] == pytest.approx(100.0)
    assert (s["requests"], s["constrained"], s["finish_reasons"]) == (2, 1, ["length"])


def test_render_constrained_tables() -> None:
    text = "\n".join(render(_constrained_section()))
    assert "| 16 | 30.00 / 31.00 | 1.00 / 2.00 | 850 | 0.200 | +1.00 ms (+3.2% of a step) |" in text
    assert "| 16 | 0 | 400.0 | 390, 400, 410 |" in text
    assert "| 16 | 8 | 380.0 | 380, 370, 385 |" in text
    assert "0.95x the all-plain throughput" in text
    assert render(None) == ["_Constrained decoding was not measured in this run._"]
    section = render_section(_results(), evaluate(_results()))
    assert "### Constrained decoding" in section and "0.95x" in section
