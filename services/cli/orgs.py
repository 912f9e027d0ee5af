"""`sluice orgs create|list|set-plan|set-limits`: organizations (auth) and their plan and limits
(metering policy of scope "org")."""

from __future__ import annotations

import argparse
from typing import Any

from services.cli import args as a
from services.cli.lookup import find_org, get_policy, update_quota
from services.cli.output import quota_summary, when
from services.cli.rpc import CommandFailed, auth, metering
from services.cli.table import print_table
from services.common.settings import Settings
from services.pb.auth.v1 import auth_pb2
from services.pb.metering.v1 import metering_pb2

LIST_HEADERS = ("id", "name", "created", "plan", "limits")


def register(subparsers: Any) -> None:
    """Adds `orgs` and its sub-commands to the `sluice` parser's subparsers."""
    orgs = subparsers.add_parser("orgs", help="create and list organizations, set plans and limits")
    sub = orgs.add_subparsers(dest="orgs_command", metavar="COMMAND", required=True)

    create = sub.add_parser("create", help="create an organization (with its default project)")
    create.add_argument("name", metavar="NAME")
    create.add_argument("--plan", default="", help="put the organization on this plan")
    create.set_defaults(func=create_org)

    list_ = sub.add_parser("list", help="list organizations with their plan and limits")
    list_.set_defaults(func=list_orgs)

    set_plan = sub.add_parser("set-plan", help="put an organization on a plan ('' = no plan)")
    set_plan.add_argument("org", metavar="ORG", help="organization name or id")
    set_plan.add_argument("plan", metavar="PLAN")
    set_plan.set_defaults(func=set_plan_cmd)

    set_limits = sub.add_parser(
        "set-limits", help="change an organization's limits (0 removes one); others are kept"
    )
    set_limits.add_argument("org", metavar="ORG", help="organization name or id")
    a.add_limit_flags(set_limits)
    a.add_budget_flags(set_limits)
    set_limits.set_defaults(func=set_limits_cmd)


def _known_plans(settings: Settings) -> list[str]:
    return [p.name for p in metering(settings, "ListPlans", metering_pb2.ListPlansRequest()).plans]


def _require_plan(settings: Settings, plan: str) -> None:
    # Checked before anything is created, so an unknown plan leaves no half-made organization.
    known = _known_plans(settings)
    if plan not in known:
        listing = ", ".join(known) if known else "none yet; create one with `sluice plans set`"
        raise CommandFailed(f"unknown plan {plan!r} (plans: {listing})")


def create_org(args: argparse.Namespace, settings: Settings) -> int:
    if args.plan:
        _require_plan(settings, args.plan)
    org = auth(settings, "CreateOrg", auth_pb2.CreateOrgRequest(name=args.name))
    print(f"Created org {org.id} ({org.name}) with default project {org.default_project_id}.")
    if args.plan:
        policy = metering_pb2.Policy(scope="org", scope_id=org.id, plan=args.plan)
        try:
            metering(settings, "SetPolicy", policy)
        except CommandFailed as exc:
            raise CommandFailed(
                f"{exc} (org {org.name} was created without a plan; "
                f"run `sluice orgs set-plan {org.name} {args.plan}`)"
            ) from None
        print(f"Org {org.name} is on plan {args.plan}.")
    return 0


def list_orgs(args: argparse.Namespace, settings: Settings) -> int:
    orgs = auth(settings, "ListOrgs", auth_pb2.ListOrgsRequest()).orgs
    rows = []
    for org in orgs:
        policy = get_policy(settings, "org", org.id)
        rows.append(
            (org.id, org.name, when(org.created), policy.plan or "-", quota_summary(policy.quota))
        )
    print_table(LIST_HEADERS, rows)
    return 0


def set_plan_cmd(args: argparse.Namespace, settings: Settings) -> int:
    org = find_org(settings, args.org)
    policy = get_policy(settings, "org", org.id)
    policy.plan = args.plan
    metering(settings, "SetPolicy", policy)
    plan = f"is on plan {args.plan}" if args.plan else "has no plan"
    print(f"Org {org.name} {plan}.")
    return 0


def set_limits_cmd(args: argparse.Namespace, settings: Settings) -> int:
    changes = a.quota(args)
    if not changes:
        raise CommandFailed("nothing to change: give --rpm, --tpm, --max-concurrent or a budget")
    org = find_org(settings, args.org)
    policy = get_policy(settings, "org", org.id)
    update_quota(policy, changes)
    saved = metering(settings, "SetPolicy", policy)
    print(f"Org {org.name} limits: {quota_summary(saved.quota)}.")
    return 0
