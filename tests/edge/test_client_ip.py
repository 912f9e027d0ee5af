"""The client address: TCP peer, or the right-most untrusted X-Forwarded-For hop behind a proxy."""

from __future__ import annotations

import pytest

from services.edge.client_ip import client_ip, parse_networks

PROXIES = parse_networks("10.0.0.0/8, fd00::/8")


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        ("203.0.113.9", None, "203.0.113.9"),
        ("2001:db8::1", None, "2001:db8::1"),
        # A dual-stack listener reports IPv4 peers as IPv4-mapped IPv6.
        ("::ffff:203.0.113.9", None, "203.0.113.9"),
        ("::ffff:10.1.2.3", "198.51.100.4", "198.51.100.4"),
        # Untrusted peers cannot speak for anyone else.
        ("203.0.113.9", "198.51.100.4", "203.0.113.9"),
        ("2001:db8::1", "198.51.100.4", "2001:db8::1"),
        # Behind a trusted proxy: the right-most hop that is not itself trusted.
        ("10.0.0.1", "198.51.100.4", "198.51.100.4"),
        ("10.0.0.1", "1.1.1.1, 198.51.100.4", "198.51.100.4"),
        ("10.0.0.1", "198.51.100.4, 10.2.2.2", "198.51.100.4"),
        ("fd00::1", "2001:db8::9", "2001:db8::9"),
        ("10.0.0.1", "[2001:db8::9]:443", "2001:db8::9"),
        ("10.0.0.1", "198.51.100.4:5000", "198.51.100.4"),
        # Only trusted hops: the left-most of them is as far as anyone vouches.
        ("10.0.0.1", "10.3.3.3, 10.2.2.2", "10.3.3.3"),
        # Garbage stops the walk at the last trusted address.
        ("10.0.0.1", "198.51.100.4, not-an-ip", "10.0.0.1"),
        ("10.0.0.1", "", "10.0.0.1"),
        ("", "198.51.100.4", ""),
    ],
)
def test_client_ip(peer: str, xff: str | None, expected: str) -> None:
    assert client_ip(peer, xff, PROXIES) == expected


def test_parse_networks_rejects_garbage() -> None:
    assert parse_networks("") == ()
    assert [str(n) for n in parse_networks("127.0.0.2, ::1")] == ["127.0.0.2/32", "::1/128"]
    with pytest.raises(ValueError):
        parse_networks("10.0.0.0/33")
