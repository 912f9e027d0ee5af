"""`sluice usage`: recent usage records from the running metering service, as a table or JSON."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

from services.cli.rpc import CommandFailed, call
from services.cli.table import print_table
from services.common.settings import Settings
from services.pb.metering.v1 import metering_pb2, metering_pb2_grpc

HEADERS = (
    "time", "org", "key id", "model", "digest", "endpoint",
    "prompt_tokens", "completion_tokens", "total", "status", "latency_ms",
)  # fmt: skip


def register(subparsers: Any) -> None:
    """Adds `usage` to the `sluice` parser's subparsers."""
    usage = subparsers.add_parser("usage", help="show recent usage records, newest first")
    usage.add_argument("--org", default="", metavar="ORG_ID", help="only this organization id")
    usage.add_argument("--key", default="", metavar="KEY_ID", help="only this key id")
    usage.add_argument(
        "--limit", type=_positive, default=0, metavar="N", help="at most N records (default 100)"
    )
    usage.add_argument("--json", action="store_true", help="one JSON object per line")
    usage.set_defaults(func=show_usage)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _short_digest(digest: str) -> str:
    # Twelve hex characters tell digests apart the way short git and docker ids do.
    return digest.removeprefix("sha256:")[:12] or "-"


def _iso(created_ms: int, *, millis: bool) -> str:
    t = datetime.fromtimestamp(created_ms / 1000, UTC)
    if millis:
        return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{created_ms % 1000:03d}Z"
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def as_json(r: metering_pb2.UsageRecord) -> dict[str, object]:
    return {
        "id": r.id,
        "time": _iso(r.created_ms, millis=True),
        "created": r.created,
        "created_ms": r.created_ms,
        "org_id": r.org_id,
        "key_id": r.key_id,
        "model": r.model,
        "model_digest": r.model_digest,
        "endpoint": r.endpoint,
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "total_tokens": r.prompt_tokens + r.completion_tokens,
        "status": r.status,
        "latency_ms": r.latency_ms,
        "ttft_ms": r.ttft_ms,
        "request_id": r.request_id,
    }


def show_usage(args: argparse.Namespace, settings: Settings) -> int:
    request = metering_pb2.QueryUsageRequest(org_id=args.org, key_id=args.key, limit=args.limit)
    try:
        resp = call(
            settings.metering_addr,
            "metering",
            lambda ch: metering_pb2_grpc.MeteringServiceStub(ch).QueryUsage,
            request,
        )
    except CommandFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        for r in resp.records:
            print(json.dumps(as_json(r)))
        return 0
    rows = [
        (
            _iso(r.created_ms, millis=False),
            r.org_id,
            r.key_id,
            r.model,
            _short_digest(r.model_digest),
            r.endpoint or "-",
            r.prompt_tokens,
            r.completion_tokens,
            r.prompt_tokens + r.completion_tokens,
            r.status,
            round(r.latency_ms, 1),
        )
        for r in resp.records
    ]
    print_table(HEADERS, rows)
    return 0
