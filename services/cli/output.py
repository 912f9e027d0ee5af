"""Output shared by the `sluice` commands: timestamps, limit summaries, and JSON or CSV records.

Tables come from `services.cli.table`; machine formats are written here, with the stdlib `json`
and `csv` modules, so that every command quotes and escapes the same way.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from google.protobuf import json_format
from google.protobuf.message import Message

FORMATS = ("table", "json", "csv")


def when(unix_s: int, zero: str = "-") -> str:
    """`2024-05-01T12:00:00Z`, or `zero` for an unset (0) time."""
    if not unix_s:
        return zero
    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def count(value: int) -> int | str:
    """A limit for a table cell: 0 means no limit, shown as `-`."""
    return value or "-"


def listed(values: Sequence[str], empty: str = "*") -> str:
    """A list for one table cell (no spaces, so rows split cleanly on whitespace)."""
    return ",".join(values) or empty


def quota_summary(quota: Any) -> str:
    """One cell for an auth or metering `Quota`: `rpm=60,tpm=10000,budget=1000000/month`."""
    parts = [
        f"{label}={value}"
        for label, value in (
            ("rpm", quota.rpm),
            ("tpm", quota.tpm),
            ("concurrent", quota.max_concurrent),
        )
        if value
    ]
    if quota.budget_tokens:
        period = quota.budget_period if quota.budget_period in ("day", "month") else "lifetime"
        parts.append(f"budget={quota.budget_tokens}/{period}")
    return ",".join(parts) or "-"


def print_records(
    fmt: str,
    fields: Sequence[str],
    records: Sequence[Mapping[str, object]],
    out: TextIO | None = None,
) -> None:
    """Writes `records` as a JSON list (`json`), one JSON object per line (`jsonl`) or CSV with a
    header row of `fields` (`csv`; the header is written even when there are no records)."""
    out = out or sys.stdout
    if fmt == "json":
        json.dump([dict(r) for r in records], out, indent=2)
        out.write("\n")
    elif fmt == "jsonl":
        for r in records:
            out.write(json.dumps(dict(r)) + "\n")
    elif fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=list(fields), lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
    else:
        raise ValueError(f"unknown output format {fmt!r}")
    out.flush()


def print_messages(messages: Sequence[Message], out: TextIO | None = None) -> None:
    """Protobuf messages as one JSON list, with the protos' field names and every field."""
    out = out or sys.stdout
    rows = [
        json_format.MessageToDict(
            m,
            always_print_fields_with_no_presence=True,
            preserving_proto_field_name=True,
            unquote_int64_if_possible=True,
        )
        for m in messages
    ]
    json.dump(rows, out, indent=2)
    out.write("\n")
    out.flush()
