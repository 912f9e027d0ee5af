"""Argument types and flag groups shared by the `sluice` commands: durations, times, lists, limits.

Value types raise `argparse.ArgumentTypeError`, so a malformed value is a usage error that names
the flag; combinations of flags are checked by the commands and fail as `CommandFailed`.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from services.cli.rpc import CommandFailed
from services.common.quota import BUDGET_PERIODS

INT64_MAX = 2**63 - 1
LIMIT_FLAGS = ("rpm", "tpm", "max_concurrent")
_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
# Units in descending order, each at most once: "1h30m" reads one way only, "30m1h" is refused.
_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
DURATION_HELP = "e.g. 90s, 15m, 12h, 30d or 1h30m"


def parse_duration(text: str) -> int:
    """Seconds in a duration such as `90s`, `15m`, `12h`, `30d` or `1h30m` (`0` is zero).

    Raises `ValueError` with a message fit for the user.
    """
    if text == "0":
        return 0
    match = _DURATION.fullmatch(text)
    if not text or match is None:
        raise ValueError(f"invalid duration {text!r} ({DURATION_HELP}; units d, h, m, s in order)")
    seconds = sum(
        int(n) * _UNIT_SECONDS[unit]
        for n, unit in zip(match.groups(), "dhms", strict=True)
        if n is not None
    )
    if seconds > INT64_MAX:
        raise ValueError(f"duration {text!r} is too long")
    return seconds


def duration(text: str) -> int:
    """argparse type: a duration in seconds, zero allowed."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_duration(text: str) -> int:
    """argparse type: a duration in seconds, more than zero."""
    seconds = duration(text)
    if seconds == 0:
        raise argparse.ArgumentTypeError(f"duration {text!r} must be more than zero")
    return seconds


def parse_instant(text: str, now_s: float) -> int:
    """Unix milliseconds of `text`: an ISO date or date-time (UTC unless it says otherwise), or a
    duration before `now_s` (`7d` = seven days ago). Raises `ValueError`."""
    try:
        return int((now_s - parse_duration(text)) * 1000)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"invalid time {text!r}: give a date (2024-05-01), a date and time "
            f"(2024-05-01T12:00Z) or a duration before now ({DURATION_HELP})"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def instant(text: str) -> int:
    """argparse type: unix milliseconds of a date, date-time or duration before now."""
    try:
        return parse_instant(text, time.time())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def non_negative(text: str) -> int:
    """argparse type: an integer from 0 (no limit) to the largest int64."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value <= INT64_MAX:
        raise argparse.ArgumentTypeError(f"{text} is out of range (0 to {INT64_MAX})")
    return value


def positive(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = non_negative(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def name_list(text: str) -> list[str]:
    """argparse type: comma-separated names (`a,b`); empty items are refused."""
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"empty item in {text!r}")
    return items


def cidr_list(text: str) -> list[str]:
    """argparse type: comma-separated IPv4/IPv6 addresses or CIDRs, normalised.

    A CIDR with host bits set (10.0.0.1/8) is refused rather than silently widened or narrowed:
    it is almost always a typo for the network or for one address.
    """
    out = []
    for item in name_list(text):
        try:
            if "/" in item:
                out.append(str(ipaddress.ip_network(item, strict=True)))
            else:
                out.append(str(ipaddress.ip_address(item)))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"invalid address or CIDR {item!r}: {exc}") from None
    return out


def flatten(groups: Iterable[list[str]] | None) -> list[str]:
    """The items of a repeatable list flag (`action="append"` with a list type), in order."""
    return [item for group in groups or () for item in group]


def add_limit_flags(parser: argparse.ArgumentParser) -> None:
    """`--rpm`, `--tpm` and `--max-concurrent`; unset ones stay None (not given, not 0)."""
    parser.add_argument("--rpm", type=non_negative, metavar="N", help="requests per minute")
    parser.add_argument("--tpm", type=non_negative, metavar="N", help="tokens per minute")
    parser.add_argument(
        "--max-concurrent", type=non_negative, metavar="N", help="requests in flight at once"
    )


def add_budget_flags(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    """`--budget-tokens N --budget-period day|month|none` (given together)."""
    parser.add_argument(
        "--budget-tokens", type=non_negative, metavar="N", required=required,
        help="token budget per period (0 = none)",
    )  # fmt: skip
    parser.add_argument(
        "--budget-period", choices=BUDGET_PERIODS, required=required,
        help="budget period: day, month or none (a lifetime budget)",
    )  # fmt: skip


def limits(args: argparse.Namespace) -> dict[str, Any]:
    """The limit flags that were given, as Quota fields."""
    return {f: getattr(args, f) for f in LIMIT_FLAGS if getattr(args, f, None) is not None}


def budget(args: argparse.Namespace) -> dict[str, Any]:
    """The budget flags as Quota fields; both or neither must be given."""
    tokens, period = args.budget_tokens, args.budget_period
    if (tokens is None) != (period is None):
        raise CommandFailed(
            "--budget-tokens and --budget-period go together, "
            "e.g. --budget-tokens 1000000 --budget-period month"
        )
    return {} if tokens is None else {"budget_tokens": tokens, "budget_period": period}


def quota(args: argparse.Namespace) -> dict[str, Any]:
    """Every limit and budget flag that was given, as Quota fields."""
    return {**limits(args), **budget(args)}
