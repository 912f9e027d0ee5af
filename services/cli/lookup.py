"""Resolving what the operator typed (an organization or project name or id) to the records the
services hold, and reading a scope's policy, for the commands that need ids."""

from __future__ import annotations

from services.cli.rpc import CommandFailed, auth, metering
from services.common.settings import Settings
from services.pb.auth.v1 import auth_pb2
from services.pb.metering.v1 import metering_pb2


def find_org(settings: Settings, ref: str) -> auth_pb2.Org:
    """The organization whose id or name is `ref` (an id wins over a name)."""
    orgs = list(auth(settings, "ListOrgs", auth_pb2.ListOrgsRequest()).orgs)
    for match in ([o for o in orgs if o.id == ref], [o for o in orgs if o.name == ref]):
        if match:
            return match[0]
    raise CommandFailed(f"unknown organization {ref!r} (`sluice orgs list` shows them)")


def find_project(settings: Settings, ref: str, org: auth_pb2.Org | None = None) -> auth_pb2.Project:
    """The project whose id or name is `ref`, in `org` when given.

    Without an organization a name must be unique across all of them.
    """
    request = auth_pb2.ListProjectsRequest(org=org.id if org else "")
    projects = list(auth(settings, "ListProjects", request).projects)
    by_id = [p for p in projects if p.id == ref]
    if by_id:
        return by_id[0]
    by_name = [p for p in projects if p.name == ref]
    if len(by_name) == 1:
        return by_name[0]
    where = f" in organization {org.name!r}" if org else ""
    if by_name:
        orgs = ", ".join(sorted(p.org_name for p in by_name))
        raise CommandFailed(f"project {ref!r} exists in several organizations ({orgs}); add --org")
    raise CommandFailed(f"unknown project {ref!r}{where} (`sluice projects list` shows them)")


def get_policy(settings: Settings, scope: str, scope_id: str) -> metering_pb2.Policy:
    """The scope's current policy with `scope` and `scope_id` filled in (an empty policy when none
    was set), ready to be changed and sent back whole with SetPolicy."""
    request = metering_pb2.GetPolicyRequest(scope=scope, scope_id=scope_id)
    current = metering(settings, "GetPolicy", request)
    policy = metering_pb2.Policy()
    policy.CopyFrom(current)
    policy.scope, policy.scope_id = scope, scope_id
    return policy


def update_quota(policy: metering_pb2.Policy, fields: dict[str, object]) -> None:
    """Sets the given Quota fields of `policy`, zeros included (MergeFrom would skip zeros)."""
    for name, value in fields.items():
        setattr(policy.quota, name, value)
