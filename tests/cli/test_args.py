"""The shared argument types: durations, times, numbers, name and CIDR lists, limit flags."""

from __future__ import annotations

import argparse

import pytest

from services.cli import args as a
from services.cli.rpc import CommandFailed


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0),
        ("0s", 0),
        ("90s", 90),
        ("15m", 900),
        ("12h", 43200),
        ("30d", 2592000),
        ("1h30m", 5400),
        ("1d2h3m4s", 93784),
        ("120m", 7200),
    ],
)
def test_durations(text: str, seconds: int) -> None:
    assert a.parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "5", "1x", "h", "1.5h", "-1h", "30m1h", "1h1h", "1H", " 1h", "1h ", "1 h", "1w"]
)
def test_malformed_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        a.parse_duration(text)


def test_duration_types() -> None:
    assert a.duration("0") == 0
    with pytest.raises(argparse.ArgumentTypeError, match="more than zero"):
        a.positive_duration("0m")
    with pytest.raises(argparse.ArgumentTypeError, match="too long"):
        a.duration(f"{2**63}s")


NOW = 1_714_564_800.0  # 2024-05-01T12:00:00Z


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("2024-05-01", 1_714_521_600_000),
        ("2024-05-01T12:00", 1_714_564_800_000),
        ("2024-05-01T12:00:00Z", 1_714_564_800_000),
        ("2024-05-01T14:00:00+02:00", 1_714_564_800_000),
        ("1h", 1_714_561_200_000),
        ("7d", 1_713_960_000_000),
    ],
)
def test_instants(text: str, ms: int) -> None:
    assert a.parse_instant(text, NOW) == ms


@pytest.mark.parametrize("text", ["yesterday", "2024-13-01", "05/01/2024", "1x"])
def test_malformed_instants_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="give a date"):
        a.parse_instant(text, NOW)


def test_numbers() -> None:
    assert a.non_negative("0") == 0 and a.positive("3") == 3
    for bad, message in [("x", "not a whole number"), ("-1", "out of range"),
                         (str(2**63), "out of range")]:  # fmt: skip
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            a.non_negative(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="at least 1"):
        a.positive("0")


def test_name_lists() -> None:
    assert a.name_list("a") == ["a"]
    assert a.name_list("a, b") == ["a", "b"]
    for bad in ("", "a,", ",a", "a,,b"):
        with pytest.raises(argparse.ArgumentTypeError, match="empty item"):
            a.name_list(bad)


def test_cidr_lists_are_checked_and_normalised() -> None:
    assert a.cidr_list("10.0.0.0/8,192.168.0.1") == ["10.0.0.0/8", "192.168.0.1"]
    assert a.cidr_list("2001:DB8:0:0::/32, ::1") == ["2001:db8::/32", "::1"]
    with pytest.raises(argparse.ArgumentTypeError, match="host bits set"):
        a.cidr_list("10.0.0.1/8")
    with pytest.raises(argparse.ArgumentTypeError, match="'10.0.0.0/33'"):
        a.cidr_list("10.0.0.0/33")


def test_repeatable_lists_flatten_in_order() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--allow-ip", type=a.cidr_list, action="append")
    ns = parser.parse_args(["--allow-ip", "10.0.0.0/8,::1", "--allow-ip", "1.2.3.4"])
    assert a.flatten(ns.allow_ip) == ["10.0.0.0/8", "::1", "1.2.3.4"]
    assert a.flatten(parser.parse_args([]).allow_ip) == []


def _quota_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    a.add_limit_flags(parser)
    a.add_budget_flags(parser)
    return parser


def test_quota_flags_keep_unset_apart_from_zero() -> None:
    parser = _quota_parser()
    assert a.quota(parser.parse_args([])) == {}
    ns = parser.parse_args(["--tpm", "0", "--budget-tokens", "9", "--budget-period", "none"])
    assert a.quota(ns) == {"tpm": 0, "budget_tokens": 9, "budget_period": "none"}


@pytest.mark.parametrize("flags", [["--budget-tokens", "9"], ["--budget-period", "day"]])
def test_budget_flags_go_together(flags: list[str]) -> None:
    with pytest.raises(CommandFailed, match="go together"):
        a.budget(_quota_parser().parse_args(flags))
