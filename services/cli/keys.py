"""`sluice keys create|list|revoke|rotate`: API keys and their policy, through the auth service.

A new secret (from create or rotate) is printed alone on the last line of stdout and everything
meant for a person goes to stderr, so `KEY=$(sluice keys create ...)` captures just the secret.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from services.cli import args as a
from services.cli.output import listed, print_messages, quota_summary, when
from services.cli.rpc import auth
from services.cli.table import print_table
from services.common.settings import Settings
from services.pb.auth.v1 import auth_pb2

DEFAULT_GRACE = "24h"
LIST_HEADERS = (
    "id", "org", "project", "name", "fingerprint", "created", "expires", "state", "models",
    "ips", "limits",
)  # fmt: skip


def register(subparsers: Any) -> None:
    """Adds `keys` and its sub-commands to the `sluice` parser's subparsers."""
    keys = subparsers.add_parser("keys", help="create, list, rotate and revoke API keys")
    sub = keys.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)

    create = sub.add_parser(
        "create", help="create a key; the secret is printed once, alone on the last line"
    )
    create.add_argument("--org", required=True, help="organization name (created if missing)")
    create.add_argument(
        "--project", default="", help="project name or id (default: the org's default project)"
    )
    create.add_argument("--name", required=True, help="a name for the key, e.g. the app using it")
    create.add_argument(
        "--models", type=a.name_list, action="append", metavar="M,...",
        help="models the key may use (default: every model); repeatable",
    )  # fmt: skip
    a.add_limit_flags(create)
    a.add_budget_flags(create)
    create.add_argument(
        "--allow-ip", type=a.cidr_list, action="append", metavar="CIDR",
        help="client addresses or CIDRs the key works from (default: any); repeatable or "
        "comma-separated",
    )  # fmt: skip
    create.add_argument(
        "--expires-in", type=a.positive_duration, metavar="DURATION",
        help=f"the key stops working after this long ({a.DURATION_HELP}; default: never)",
    )  # fmt: skip
    create.set_defaults(func=create_key)

    list_ = sub.add_parser("list", help="list keys (never their secrets)")
    list_.add_argument("--org", default="", help="only this organization's keys (name or id)")
    list_.add_argument("--project", default="", help="only this project's keys (name or id)")
    list_.add_argument("--format", choices=("table", "json"), default="table")
    list_.set_defaults(func=list_keys)

    revoke = sub.add_parser("revoke", help="revoke a key; it stops working at once")
    revoke.add_argument(
        "key", metavar="KEY_ID_OR_KEY", help="the key's id (key_0123abcd...) or its secret"
    )
    revoke.set_defaults(func=revoke_key)

    rotate = sub.add_parser(
        "rotate", help="give a key a new secret, printed alone on the last line of stdout"
    )
    rotate.add_argument("key", metavar="KEY_ID_OR_KEY", help="the key's id or its current secret")
    rotate.add_argument(
        "--grace", type=a.duration, default=a.parse_duration(DEFAULT_GRACE), metavar="DURATION",
        help=f"how long the previous secret keeps working (default {DEFAULT_GRACE}; 0 = stops "
        "at once)",
    )  # fmt: skip
    rotate.set_defaults(func=rotate_key)


def _secret_arg(value: str) -> str:
    """`value` when it may be a secret (anything but a key id), for redaction in errors."""
    return "" if value.startswith("key_") else value


def create_key(args: argparse.Namespace, settings: Settings) -> int:
    request = auth_pb2.CreateKeyRequest(
        org=args.org,
        name=args.name,
        project=args.project,
        allowed_models=a.flatten(args.models),
        allowed_ips=a.flatten(args.allow_ip),
        expires_in_seconds=args.expires_in or 0,
        quota=auth_pb2.Quota(**a.quota(args)),
    )
    resp = auth(settings, "CreateKey", request)
    key = resp.key
    project = f", project {key.project_name}" if key.project_name else ""
    expires = f"; expires {when(key.expires)}" if key.expires else ""
    # The human line goes to stderr so that stdout is the secret alone: `KEY=$(sluice keys
    # create ...)` just works, and so does reading the last line of stdout.
    print(
        f"Created key {key.id} ({key.name}) for org {key.org_name}{project}{expires}. "
        "Store the secret now: it is not shown again.",
        file=sys.stderr,
    )
    print(resp.secret, flush=True)
    return 0


def _state(k: auth_pb2.KeyInfo) -> str:
    return k.state or ("revoked" if k.revoked else "active")


def list_keys(args: argparse.Namespace, settings: Settings) -> int:
    request = auth_pb2.ListKeysRequest(org=args.org, project=args.project)
    resp = auth(settings, "ListKeys", request)
    if args.format == "json":
        print_messages(resp.keys)
        return 0
    rows = [
        (
            k.id,
            k.org_name,
            k.project_name or "-",
            k.name,
            k.fingerprint,
            when(k.created),
            when(k.expires, zero="never"),
            _state(k),
            listed(k.allowed_models),
            listed(k.allowed_ips),
            quota_summary(k.quota),
        )
        for k in resp.keys
    ]
    print_table(LIST_HEADERS, rows)
    return 0


def revoke_key(args: argparse.Namespace, settings: Settings) -> int:
    request = auth_pb2.RevokeKeyRequest(key_id=args.key)
    resp = auth(settings, "RevokeKey", request, redact=_secret_arg(args.key))
    print(f"Revoked key {resp.id} ({resp.name}, {resp.fingerprint}) of org {resp.org_name}.")
    return 0


def rotate_key(args: argparse.Namespace, settings: Settings) -> int:
    request = auth_pb2.RotateKeyRequest(key_id=args.key, grace_seconds=args.grace)
    started = int(time.time())
    resp = auth(settings, "RotateKey", request, redact=_secret_arg(args.key))
    key = resp.key
    if args.grace == 0:
        previous = "The previous secret stopped working at once."
    else:
        # The service says when the grace ends; the local estimate only covers an older service.
        until = when(key.previous_expires or started + args.grace)
        shown = f" ({key.previous_fingerprint})" if key.previous_fingerprint else ""
        previous = f"The previous secret{shown} keeps working until {until}."
    print(
        f"Rotated key {key.id} ({key.name}) of org {key.org_name}: new secret {key.fingerprint}. "
        f"{previous} Store the new secret now: it is not shown again.",
        file=sys.stderr,
    )
    print(resp.secret, flush=True)
    return 0
