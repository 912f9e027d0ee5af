"""`sluice keys create|list|revoke`: API key management through the running auth service."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

from services.cli.rpc import CommandFailed, call
from services.cli.table import print_table
from services.common.settings import Settings
from services.pb.auth.v1 import auth_pb2, auth_pb2_grpc


def register(subparsers: Any) -> None:
    """Adds `keys` and its sub-commands to the `sluice` parser's subparsers."""
    keys = subparsers.add_parser("keys", help="create, list and revoke API keys")
    sub = keys.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)

    create = sub.add_parser(
        "create", help="create a key; the secret is printed once, alone on the last line"
    )
    create.add_argument("--org", required=True, help="organization name (created if missing)")
    create.add_argument("--name", required=True, help="a name for the key, e.g. the app using it")
    create.set_defaults(func=create_key)

    list_ = sub.add_parser("list", help="list keys (never their secrets)")
    list_.add_argument("--org", default="", help="only this organization's keys")
    list_.set_defaults(func=list_keys)

    revoke = sub.add_parser("revoke", help="revoke a key by id; it stops working at once")
    revoke.add_argument("key_id", metavar="KEY_ID", help="the key's id, e.g. key_0123abcd...")
    revoke.set_defaults(func=revoke_key)


def _stub(channel: Any) -> auth_pb2_grpc.AuthServiceStub:
    return auth_pb2_grpc.AuthServiceStub(channel)


def _when(unix_s: int) -> str:
    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def create_key(args: argparse.Namespace, settings: Settings) -> int:
    request = auth_pb2.CreateKeyRequest(org=args.org, name=args.name)
    try:
        resp = call(settings.auth_addr, "auth", lambda ch: _stub(ch).CreateKey, request)
    except CommandFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    # The human line goes to stderr so that stdout is the secret alone: `KEY=$(sluice keys
    # create ...)` just works, and so does reading the last line of stdout.
    print(
        f"Created key {resp.key.id} ({resp.key.name}) for org {resp.key.org_name}. "
        "Store the secret now: it is not shown again.",
        file=sys.stderr,
    )
    print(resp.secret, flush=True)
    return 0


def list_keys(args: argparse.Namespace, settings: Settings) -> int:
    request = auth_pb2.ListKeysRequest(org=args.org)
    try:
        resp = call(settings.auth_addr, "auth", lambda ch: _stub(ch).ListKeys, request)
    except CommandFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    rows = [
        (
            k.id,
            k.org_name,
            k.name,
            k.fingerprint,
            _when(k.created),
            "revoked" if k.revoked else "active",
        )
        for k in resp.keys
    ]
    print_table(("id", "org", "name", "fingerprint", "created", "state"), rows)
    return 0


def revoke_key(args: argparse.Namespace, settings: Settings) -> int:
    request = auth_pb2.RevokeKeyRequest(key_id=args.key_id)
    try:
        resp = call(settings.auth_addr, "auth", lambda ch: _stub(ch).RevokeKey, request)
    except CommandFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Revoked key {resp.id} ({resp.name}, {resp.fingerprint}) of org {resp.org_name}.")
    return 0
