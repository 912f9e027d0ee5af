"""Shared output: timestamps, limit summaries, and records as JSON, JSON lines and CSV."""

from __future__ import annotations

import csv
import io
import json

import pytest

from services.cli.output import listed, print_records, quota_summary, when
from services.pb.auth.v1 import auth_pb2
from services.pb.metering.v1 import metering_pb2

RECORDS = [{"name": "a, b", "n": 1}, {"name": 'say "hi"', "n": 2}]


def test_when() -> None:
    assert when(1_714_564_800) == "2024-05-01T12:00:00Z"
    assert when(0) == "-" and when(0, zero="never") == "never"


def test_listed() -> None:
    assert listed(["a", "b"]) == "a,b" and listed([]) == "*"


def test_quota_summary_reads_both_quota_messages() -> None:
    assert quota_summary(auth_pb2.Quota()) == "-"
    full = metering_pb2.Quota(
        rpm=1, tpm=2, max_concurrent=3, budget_tokens=4, budget_period="month"
    )
    assert quota_summary(full) == "rpm=1,tpm=2,concurrent=3,budget=4/month"
    assert quota_summary(auth_pb2.Quota(budget_tokens=5)) == "budget=5/lifetime"


def test_json_is_one_list() -> None:
    out = io.StringIO()
    print_records("json", ("name", "n"), RECORDS, out)
    assert json.loads(out.getvalue()) == RECORDS
    out = io.StringIO()
    print_records("json", ("name", "n"), [], out)
    assert json.loads(out.getvalue()) == []


def test_jsonl_is_one_object_per_line() -> None:
    out = io.StringIO()
    print_records("jsonl", ("name", "n"), RECORDS, out)
    assert [json.loads(line) for line in out.getvalue().splitlines()] == RECORDS


def test_csv_quotes_and_has_a_header_even_when_empty() -> None:
    out = io.StringIO()
    print_records("csv", ("name", "n"), RECORDS, out)
    assert out.getvalue().splitlines()[0] == "name,n"
    assert list(csv.DictReader(io.StringIO(out.getvalue()))) == [
        {"name": "a, b", "n": "1"},
        {"name": 'say "hi"', "n": "2"},
    ]
    out = io.StringIO()
    print_records("csv", ("name", "n"), [], out)
    assert out.getvalue() == "name,n\n"


def test_unknown_format() -> None:
    with pytest.raises(ValueError, match="xml"):
        print_records("xml", (), [], io.StringIO())
