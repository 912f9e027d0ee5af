"""IP allowlists: normalizing entries, parsing client addresses, matching."""

from __future__ import annotations

import pytest

from services.auth.netrules import ip_allowed, normalize_allowlist, parse_client_ip
from services.common.errors import InvalidArgument


def test_entries_are_normalized() -> None:
    assert normalize_allowlist(
        [
            "10.0.0.0/8",
            "203.0.113.9",
            " 192.168.1.77/24 ",
            "2001:DB8::/32",
            "2001:db8::1",
            "::ffff:198.51.100.0/120",
            "::ffff:198.51.100.7",
            "10.0.0.0/8",
        ]
    ) == (
        "10.0.0.0/8",
        "203.0.113.9/32",
        "192.168.1.0/24",
        "2001:db8::/32",
        "2001:db8::1/128",
        "198.51.100.0/24",
        "198.51.100.7/32",
    )


@pytest.mark.parametrize(
    "bad",
    ["", "  ", "banana", "10.0.0.0/33", "300.1.1.1", "10.0.0.1/8/8", "fe80::1%eth0", "::/129"],
)
def test_garbage_is_refused(bad: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        normalize_allowlist(["10.0.0.0/8", bad])
    assert err.value.param == "allowed_ips"


def test_refusal_message_escapes_control_characters() -> None:
    with pytest.raises(InvalidArgument) as err:
        normalize_allowlist(["1.2.3.4\n[fake log line]"])
    assert "\n" not in err.value.message


def test_too_many_entries_are_refused() -> None:
    with pytest.raises(InvalidArgument):
        normalize_allowlist([f"10.0.{i // 256}.{i % 256}" for i in range(101)])


def test_client_addresses() -> None:
    assert str(parse_client_ip("203.0.113.9")) == "203.0.113.9"
    assert str(parse_client_ip(" 2001:db8::5 ")) == "2001:db8::5"
    assert str(parse_client_ip("::ffff:203.0.113.9")) == "203.0.113.9"
    assert str(parse_client_ip("fe80::1%eth0")) == "fe80::1"
    for bad in ("", "unknown", "203.0.113.9:443", "[::1]"):
        assert parse_client_ip(bad) is None


def test_matching() -> None:
    rules = normalize_allowlist(["10.0.0.0/8", "2001:db8::/32", "203.0.113.9"])
    for ok in ("10.1.2.3", "2001:db8::1", "203.0.113.9", "::ffff:10.9.9.9"):
        assert ip_allowed(parse_client_ip(ok), rules), ok
    for no in ("11.0.0.1", "2001:db9::1", "203.0.113.10", "::1", "::ffff:11.0.0.1"):
        assert not ip_allowed(parse_client_ip(no), rules), no
    assert not ip_allowed(None, rules)
    assert ip_allowed(None, ())
    assert ip_allowed(parse_client_ip("8.8.8.8"), ())
