"""`sluice providers add|list|remove|rekey`: organizations' own OpenAI and Anthropic keys (BYOK).

A provider key is read from `--api-key -` (stdin, or a prompt that does not echo), from
SLUICE_PROVIDER_API_KEY, or from `--api-key KEY`; it is sent to the auth service once and never
printed: only its fingerprint is shown.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path
from typing import Any

from services.cli.lookup import find_org
from services.cli.output import when
from services.cli.rpc import CommandFailed, auth
from services.cli.table import print_table
from services.common.errors import SluiceError
from services.common.settings import Settings, decode_data_key
from services.pb.auth.v1 import auth_pb2

PROVIDERS = ("openai", "anthropic")
KEY_ENV = "SLUICE_PROVIDER_API_KEY"
CREDENTIALS_KEY_ENV = "SLUICE_CREDENTIALS_KEY"
KEY_BYTES = 32  # AES-256
LIST_HEADERS = ("id", "org", "provider", "name", "fingerprint", "created")


def register(subparsers: Any) -> None:
    """Adds `providers` and its sub-commands to the `sluice` parser's subparsers."""
    providers = subparsers.add_parser("providers", help="store provider keys (BYOK)")
    sub = providers.add_subparsers(dest="providers_command", metavar="COMMAND", required=True)

    add = sub.add_parser("add", help="store a provider key, encrypted (replaces one of that name)")
    add.add_argument("--org", required=True, help="organization name or id")
    add.add_argument("--provider", required=True, choices=PROVIDERS)
    add.add_argument(
        "--api-key", default="", metavar="KEY",
        help=f"the provider's key; '-' reads it from stdin (default: ${KEY_ENV})",
    )  # fmt: skip
    add.add_argument("--name", default="", help="credential name (default: the provider's name)")
    add.set_defaults(func=add_provider)

    list_ = sub.add_parser("list", help="list provider credentials (never their keys)")
    list_.add_argument("--org", default="", help="only this organization's credentials")
    list_.set_defaults(func=list_providers)

    remove = sub.add_parser("remove", help="delete a provider credential")
    remove.add_argument("id", metavar="ID", help="the credential's id")
    remove.set_defaults(func=remove_provider)

    rekey = sub.add_parser(
        "rekey", help="re-encrypt every stored provider key under a new credentials key"
    )
    rekey.add_argument(
        "--new-key-file", type=Path, metavar="PATH",
        help="the new credentials key, in the form SLUICE_CREDENTIALS_KEY takes "
        "(default: a newly generated key)",
    )  # fmt: skip
    rekey.set_defaults(func=rekey_cmd)


def _read_provider_key(args: argparse.Namespace) -> str:
    if args.api_key == "-":
        # A prompt that does not echo when a person types it; a pipe is read whole.
        raw = getpass.getpass("Provider API key: ") if sys.stdin.isatty() else sys.stdin.read()
        source = "stdin"
    elif args.api_key:
        raw, source = args.api_key, "--api-key"
        print(
            f"note: a key on the command line stays in shell history; prefer --api-key - "
            f"or ${KEY_ENV}",
            file=sys.stderr,
        )
    else:
        # Read here rather than through Settings: it is this one command's input, not
        # configuration of any service.
        raw, source = os.environ.get(KEY_ENV, ""), f"${KEY_ENV}"
    key = raw.strip()
    if not key:
        raise CommandFailed(f"no provider key: give --api-key - (stdin) or set ${KEY_ENV}")
    if any(c.isspace() for c in key):
        raise CommandFailed(f"the provider key from {source} must be one word on one line")
    return key


def add_provider(args: argparse.Namespace, settings: Settings) -> int:
    key = _read_provider_key(args)
    request = auth_pb2.AddProviderRequest(
        org=args.org, provider=args.provider, api_key=key, name=args.name
    )
    info = auth(settings, "AddProvider", request, redact=key)
    print(
        f"Stored {info.provider} key {info.fingerprint} as {info.id} ({info.name}) "
        f"for org {info.org_name}."
    )
    return 0


def list_providers(args: argparse.Namespace, settings: Settings) -> int:
    org = find_org(settings, args.org).id if args.org else ""
    resp = auth(settings, "ListProviders", auth_pb2.ListProvidersRequest(org=org))
    rows = [
        (p.id, p.org_name, p.provider, p.name, p.fingerprint, when(p.created))
        for p in resp.providers
    ]
    print_table(LIST_HEADERS, rows)
    return 0


def remove_provider(args: argparse.Namespace, settings: Settings) -> int:
    info = auth(settings, "RemoveProvider", auth_pb2.RemoveProviderRequest(id=args.id))
    print(
        f"Removed {info.provider} key {info.fingerprint} ({info.id}, {info.name}) "
        f"of org {info.org_name}."
    )
    return 0


def _read_key_file(path: Path) -> bytes:
    """The 32-byte key in `path`: written as SLUICE_CREDENTIALS_KEY is (64 hex characters or
    base64, a trailing newline allowed), or the raw bytes themselves."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CommandFailed(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return decode_data_key(data.decode("ascii"), str(path))
    except ValueError:  # UnicodeDecodeError included
        if len(data) == KEY_BYTES:
            return data
    raise CommandFailed(f"{path} must hold a {KEY_BYTES}-byte key as 64 hex characters or base64")


def _printable_key(key: bytes) -> str:
    """The key in a form SLUICE_CREDENTIALS_KEY accepts (hex, as the key file holds it)."""
    if len(key) == KEY_BYTES:
        return key.hex()
    return key.decode("ascii")


def rekey_cmd(args: argparse.Namespace, settings: Settings) -> int:
    # Imported here: rekeying opens the database directly, which no other command needs.
    from services.auth.rekey import rekey_command

    new_key = _read_key_file(args.new_key_file) if args.new_key_file else None
    try:
        count, key = rekey_command(settings, new_key)
    except (SluiceError, OSError, ValueError) as exc:
        raise CommandFailed(f"rekey failed: {exc}") from None
    done = f"Re-encrypted {count} provider credential{'s' if count != 1 else ''}."
    # The key lives in the environment or in a file under data_dir; only in the first case does
    # the operator have to carry the new key anywhere, so only then is it shown (alone on the
    # last line of stdout, the rest on stderr, as `keys create` does).
    if settings.credentials_key:
        print(done, file=sys.stderr)
        print(
            f"Set {CREDENTIALS_KEY_ENV} to the new key below wherever the services run, then "
            "restart them: the old key no longer decrypts anything.",
            file=sys.stderr,
        )
        print(_printable_key(key), flush=True)
    else:
        print(done)
        print(f"The credentials key file in {settings.data_dir} was replaced.")
    return 0
