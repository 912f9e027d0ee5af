"""`sluice plans list|set`: the named plans (monthly token quota and ceilings) in metering."""

from __future__ import annotations

import argparse
from typing import Any

from services.cli import args as a
from services.cli.output import count
from services.cli.rpc import metering
from services.cli.table import print_table
from services.common.settings import Settings
from services.pb.metering.v1 import metering_pb2

PLAN_FIELDS = ("monthly_tokens", "rpm", "tpm", "max_concurrent", "max_context")
LIST_HEADERS = ("name", *PLAN_FIELDS)


def register(subparsers: Any) -> None:
    """Adds `plans` and its sub-commands to the `sluice` parser's subparsers."""
    plans = subparsers.add_parser("plans", help="list and define plans")
    sub = plans.add_subparsers(dest="plans_command", metavar="COMMAND", required=True)

    list_ = sub.add_parser("list", help="list plans ('-' = no limit)")
    list_.set_defaults(func=list_plans)

    set_ = sub.add_parser(
        "set", help="create a plan, or change the given fields of an existing one (0 = no limit)"
    )
    set_.add_argument("name", metavar="NAME")
    set_.add_argument(
        "--monthly-tokens", type=a.non_negative, metavar="N", help="token quota per month"
    )
    a.add_limit_flags(set_)
    set_.add_argument(
        "--max-context", type=a.non_negative, metavar="N",
        help="longest prompt + completion, in tokens",
    )  # fmt: skip
    set_.set_defaults(func=set_plan)


def _plans(settings: Settings) -> list[metering_pb2.Plan]:
    return list(metering(settings, "ListPlans", metering_pb2.ListPlansRequest()).plans)


def _row(p: metering_pb2.Plan) -> tuple[object, ...]:
    return (p.name, *(count(getattr(p, f)) for f in PLAN_FIELDS))


def list_plans(args: argparse.Namespace, settings: Settings) -> int:
    print_table(LIST_HEADERS, [_row(p) for p in _plans(settings)])
    return 0


def set_plan(args: argparse.Namespace, settings: Settings) -> int:
    # PutPlan replaces a plan whole; starting from the stored one lets `plans set pro --rpm 100`
    # change the rate without resetting the quota to "no limit".
    existing = next((p for p in _plans(settings) if p.name == args.name), None)
    plan = metering_pb2.Plan(name=args.name)
    if existing is not None:
        plan.CopyFrom(existing)
    for field in PLAN_FIELDS:
        value = getattr(args, field)
        if value is not None:
            setattr(plan, field, value)
    saved = metering(settings, "PutPlan", plan)
    print(f"{'Updated' if existing else 'Created'} plan {saved.name}:")
    print_table(LIST_HEADERS, [_row(saved)])
    return 0
