"""IP allowlists of API keys: normalizing the CIDRs a key is created with and matching clients.

Entries are stored as normalized CIDR strings. IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`, as
a dual-stack socket reports an IPv4 client) are treated as the IPv4 address they carry, both
in allowlists and for the client, so one rule covers both spellings.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from services.common.errors import InvalidArgument

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_RULES = 100
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def parse_network(value: str) -> IPNetwork:
    """One allowlist entry: a CIDR, or a bare address meaning /32 (IPv4) or /128 (IPv6).

    Host bits are cleared (`10.1.2.3/24` is `10.1.2.0/24`); `ValueError` for anything else.
    """
    text = value.strip()
    if not text or "%" in text:  # zone ids name an interface, not a network
        raise ValueError(value)
    net = ipaddress.ip_network(text, strict=False)
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and net.subnet_of(_MAPPED):
        mapped = net.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network((int(mapped), net.prefixlen - 96))
    return net


def normalize_allowlist(values: Iterable[str]) -> tuple[str, ...]:
    """Normalized, deduplicated CIDR strings; `InvalidArgument` naming the first bad entry."""
    out: list[str] = []
    for value in values:
        try:
            net = parse_network(value)
        except ValueError:
            # repr() escapes control characters, so the message cannot inject text into logs.
            raise InvalidArgument(
                f"allowed_ips entry {value[:64]!r} is not an IPv4 or IPv6 address or CIDR",
                param="allowed_ips",
            ) from None
        if str(net) not in out:
            out.append(str(net))
    if len(out) > MAX_RULES:
        raise InvalidArgument(f"allowed_ips takes at most {MAX_RULES} entries", param="allowed_ips")
    return tuple(out)


def parse_client_ip(value: str) -> IPAddress | None:
    """The client's address, IPv4-mapped IPv6 folded to IPv4; None when empty or unparsable."""
    text = value.strip().split("%", 1)[0]
    if not text:
        return None
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def ip_allowed(client: IPAddress | None, allowlist: Sequence[str]) -> bool:
    """True when there is no allowlist, or the client's address falls in one of its networks.

    An unknown client address never passes a non-empty allowlist.
    """
    if not allowlist:
        return True
    if client is None:
        return False
    return any(client in ipaddress.ip_network(rule) for rule in allowlist)
