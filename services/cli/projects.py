"""`sluice projects create|list|set-budget`: projects (one per application) in an organization,
and their token budgets (metering policy of scope "project")."""

from __future__ import annotations

import argparse
from typing import Any

from services.cli import args as a
from services.cli.lookup import find_org, find_project, get_policy, update_quota
from services.cli.output import print_messages, quota_summary, when
from services.cli.rpc import CommandFailed, auth, metering
from services.cli.table import print_table
from services.common.settings import Settings
from services.pb.auth.v1 import auth_pb2
from services.pb.metering.v1 import metering_pb2

LIST_HEADERS = ("id", "org", "name", "default", "created", "limits")


def register(subparsers: Any) -> None:
    """Adds `projects` and its sub-commands to the `sluice` parser's subparsers."""
    projects = subparsers.add_parser("projects", help="create and list projects, set budgets")
    sub = projects.add_subparsers(dest="projects_command", metavar="COMMAND", required=True)

    create = sub.add_parser("create", help="create a project in an organization")
    create.add_argument("--org", required=True, help="organization name or id")
    create.add_argument("--name", required=True, help="project name, e.g. the application's")
    a.add_budget_flags(create)
    create.set_defaults(func=create_project)

    list_ = sub.add_parser("list", help="list projects with their limits")
    list_.add_argument("--org", default="", help="only this organization's projects")
    list_.add_argument("--format", choices=("table", "json"), default="table")
    list_.set_defaults(func=list_projects)

    set_budget = sub.add_parser("set-budget", help="set a project's token budget")
    set_budget.add_argument("project", metavar="PROJECT", help="project name or id")
    set_budget.add_argument("--org", required=True, help="organization name or id")
    a.add_budget_flags(set_budget, required=True)
    set_budget.set_defaults(func=set_budget_cmd)


def create_project(args: argparse.Namespace, settings: Settings) -> int:
    budget = a.budget(args)
    request = auth_pb2.CreateProjectRequest(org=args.org, name=args.name)
    project = auth(settings, "CreateProject", request)
    print(f"Created project {project.id} ({project.name}) in org {project.org_name}.")
    if budget:
        policy = metering_pb2.Policy(
            scope="project", scope_id=project.id, quota=metering_pb2.Quota(**budget)
        )
        try:
            saved = metering(settings, "SetPolicy", policy)
        except CommandFailed as exc:
            raise CommandFailed(
                f"{exc} (project {project.name} was created without a budget; run "
                f"`sluice projects set-budget {project.name} --org {project.org_name} ...`)"
            ) from None
        print(f"Project {project.name} limits: {quota_summary(saved.quota)}.")
    return 0


def list_projects(args: argparse.Namespace, settings: Settings) -> int:
    request = auth_pb2.ListProjectsRequest(org=find_org(settings, args.org).id if args.org else "")
    projects = auth(settings, "ListProjects", request).projects
    if args.format == "json":
        print_messages(projects)
        return 0
    rows = []
    for p in projects:
        policy = get_policy(settings, "project", p.id)
        rows.append(
            (
                p.id,
                p.org_name,
                p.name,
                "yes" if p.is_default else "no",
                when(p.created),
                quota_summary(policy.quota),
            )
        )
    print_table(LIST_HEADERS, rows)
    return 0


def set_budget_cmd(args: argparse.Namespace, settings: Settings) -> int:
    project = find_project(settings, args.project, find_org(settings, args.org))
    policy = get_policy(settings, "project", project.id)
    update_quota(policy, a.budget(args))
    saved = metering(settings, "SetPolicy", policy)
    print(f"Project {project.name} of org {project.org_name} limits: {quota_summary(saved.quota)}.")
    return 0
