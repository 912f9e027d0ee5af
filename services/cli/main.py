"""`sluice`: the operator's command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from services.cli import keys, model, up, usage
from services.common.settings import Settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sluice", description="Sluice: an OpenAI-compatible inference platform."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (up, keys, usage, model):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args, Settings())
    return code


if __name__ == "__main__":
    sys.exit(main())
