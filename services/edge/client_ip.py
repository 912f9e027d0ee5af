"""The client's address for IP rules and the ledger: the TCP peer, unless it is a trusted proxy.

Only when the peer is in the operator's trusted proxy CIDRs is `X-Forwarded-For` read, and then
from the right: each proxy appends the address it saw, so the right-most hop that is not itself a
trusted proxy is the first address nobody under the client's control could have written. A client
talking to us directly cannot spoof anything by sending the header. (uvicorn's own proxy-header
middleware is turned off in `services.edge.main` because it trusts loopback by default and does not
fold IPv4-mapped IPv6 peers, which a dual-stack listener reports.)
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(spec: str) -> tuple[IPNetwork, ...]:
    """Comma-separated CIDRs (a bare address is a /32 or /128); raises ValueError on garbage."""
    out = []
    for part in spec.split(","):
        if part := part.strip():
            out.append(ipaddress.ip_network(part, strict=False))
    return tuple(out)


def _address(text: str) -> IPAddress | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[2001:db8::1]:443"
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # "203.0.113.7:5000"
        text = text.split(":", 1)[0]
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _trusted(addr: IPAddress, proxies: Sequence[IPNetwork]) -> bool:
    return any(addr.version == net.version and addr in net for net in proxies)


def client_ip(peer: str, forwarded_for: str | None, proxies: Sequence[IPNetwork]) -> str:
    """The address a request is attributed to, as text ("" when the peer is unknown)."""
    addr = _address(peer) if peer else None
    if addr is None:
        return ""
    if not forwarded_for or not _trusted(addr, proxies):
        return str(addr)
    for hop in reversed(forwarded_for.split(",")):
        hop_addr = _address(hop)
        if hop_addr is None:
            # A malformed hop was written by someone we do not trust: stop at the last address
            # a trusted proxy vouched for rather than skip past it.
            return str(addr)
        if not _trusted(hop_addr, proxies):
            return str(hop_addr)
        addr = hop_addr
    return str(addr)
