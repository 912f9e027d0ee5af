"""`sluice usage`: usage records or totals from the running metering service, as a table, JSON or
CSV. Organization and project names are resolved to ids through the auth service."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from services.cli import args as a
from services.cli.lookup import find_org, find_project
from services.cli.output import FORMATS, print_records
from services.cli.rpc import CommandFailed, metering
from services.cli.table import print_table
from services.common.settings import Settings
from services.pb.metering.v1 import metering_pb2

HEADERS = (
    "time", "org", "key id", "model", "digest", "endpoint",
    "prompt_tokens", "completion_tokens", "total", "status", "latency_ms",
)  # fmt: skip
RECORD_FIELDS = (
    "id", "time", "created", "created_ms", "org_id", "project_id", "key_id", "model",
    "model_digest", "provider", "endpoint", "prompt_tokens", "completion_tokens", "total_tokens",
    "status", "latency_ms", "ttft_ms", "request_id", "client_ip",
)  # fmt: skip
GROUPS = ("day", "key", "model", "project")
TOTAL_FIELDS = ("requests", "prompt_tokens", "completion_tokens", "total_tokens")


def register(subparsers: Any) -> None:
    """Adds `usage` to the `sluice` parser's subparsers."""
    usage = subparsers.add_parser("usage", help="show usage records or totals")
    usage.add_argument("--org", default="", help="only this organization (name or id)")
    usage.add_argument("--project", default="", metavar="P", help="only this project (name or id)")
    usage.add_argument("--key", default="", metavar="KEY_ID", help="only this key id")
    usage.add_argument("--model", default="", metavar="M", help="only this model")
    usage.add_argument(
        "--since", type=a.instant, metavar="DATE|DURATION",
        help="from this time on: 2024-05-01, 2024-05-01T12:00Z (UTC unless an offset is given) "
        "or a duration before now, e.g. 7d",
    )  # fmt: skip
    usage.add_argument(
        "--until", type=a.instant, metavar="DATE",
        help="before this time (exclusive; same forms as --since)",
    )  # fmt: skip
    usage.add_argument(
        "--limit", type=a.positive, default=0, metavar="N", help="at most N records (default 100)"
    )
    usage.add_argument(
        "--group-by", choices=GROUPS, help="totals per day (UTC), key, model or project"
    )
    fmt = usage.add_mutually_exclusive_group()
    fmt.add_argument("--format", choices=FORMATS, default="table", help="output format")
    fmt.add_argument(
        "--json", dest="format", action="store_const", const="jsonl",
        help="one JSON object per line",
    )  # fmt: skip
    usage.set_defaults(func=show_usage)


def _short_digest(digest: str) -> str:
    # Twelve hex characters tell digests apart the way short git and docker ids do.
    return digest.removeprefix("sha256:")[:12] or "-"


def _iso(created_ms: int, *, millis: bool) -> str:
    t = datetime.fromtimestamp(created_ms / 1000, UTC)
    if millis:
        return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{created_ms % 1000:03d}Z"
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def as_json(r: metering_pb2.UsageRecord) -> dict[str, object]:
    """One usage record as a JSON/CSV object, with the keys of `RECORD_FIELDS` in that order."""
    return {
        "id": r.id,
        "time": _iso(r.created_ms, millis=True),
        "created": r.created,
        "created_ms": r.created_ms,
        "org_id": r.org_id,
        "project_id": r.project_id,
        "key_id": r.key_id,
        "model": r.model,
        "model_digest": r.model_digest,
        "provider": r.provider,
        "endpoint": r.endpoint,
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "total_tokens": r.prompt_tokens + r.completion_tokens,
        "status": r.status,
        "latency_ms": r.latency_ms,
        "ttft_ms": r.ttft_ms,
        "request_id": r.request_id,
        "client_ip": r.client_ip,
    }


def build_filter(args: argparse.Namespace, settings: Settings) -> metering_pb2.UsageFilter:
    """The request's filter, with organization and project names resolved to ids."""
    if args.since is not None and args.until is not None and args.since >= args.until:
        raise CommandFailed("--since must be before --until")
    org = find_org(settings, args.org) if args.org else None
    project = find_project(settings, args.project, org) if args.project else None
    return metering_pb2.UsageFilter(
        org_id=org.id if org else "",
        project_id=project.id if project else "",
        key_id=args.key,
        model=args.model,
        start_ms=args.since or 0,
        end_ms=args.until or 0,
    )


def show_usage(args: argparse.Namespace, settings: Settings) -> int:
    if args.group_by and args.limit:
        raise CommandFailed("--limit applies to records, not to --group-by totals")
    usage_filter = build_filter(args, settings)
    if args.group_by:
        _show_totals(args, settings, usage_filter)
    else:
        _show_records(args, settings, usage_filter)
    return 0


def _show_records(
    args: argparse.Namespace, settings: Settings, usage_filter: metering_pb2.UsageFilter
) -> None:
    # org_id and key_id are also sent in their older top-level fields, which a metering service
    # from before the filter existed still reads.
    request = metering_pb2.QueryUsageRequest(
        org_id=usage_filter.org_id, key_id=usage_filter.key_id, limit=args.limit,
        filter=usage_filter,
    )  # fmt: skip
    records = metering(settings, "QueryUsage", request).records
    if args.format != "table":
        print_records(args.format, RECORD_FIELDS, [as_json(r) for r in records])
        return
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
        for r in records
    ]
    print_table(HEADERS, rows)


def _show_totals(
    args: argparse.Namespace, settings: Settings, usage_filter: metering_pb2.UsageFilter
) -> None:
    request = metering_pb2.SummarizeUsageRequest(filter=usage_filter, group_by=args.group_by)
    totals = metering(settings, "SummarizeUsage", request).totals
    fields = (args.group_by, *TOTAL_FIELDS)
    objects = [{args.group_by: t.group, **{f: getattr(t, f) for f in TOTAL_FIELDS}} for t in totals]
    if args.format == "table":
        rows = [(t.group or "-", *(getattr(t, f) for f in TOTAL_FIELDS)) for t in totals]
        print_table(fields, rows)
    else:
        print_records(args.format, fields, objects)
