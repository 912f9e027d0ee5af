"""`sluice`: the operator's command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from services.cli import keys, model, orgs, plans, projects, providers, up, usage
from services.cli.rpc import CommandFailed
from services.common.settings import Settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sluice", description="Sluice: an OpenAI-compatible inference platform."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (up, keys, orgs, projects, plans, providers, usage, model):
        module.register(sub)
    return parser


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Runs the parsed command; a failed command is one `error: ...` line and exit status 1."""
    try:
        code: int = args.func(args, settings)
    except CommandFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(args, Settings())


if __name__ == "__main__":
    sys.exit(main())
