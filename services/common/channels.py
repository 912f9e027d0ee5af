"""gRPC channels to a service that may have several replicas: client-side balancing and health.

An address setting (`SLUICE_AUTH_ADDR`, ...) names one server (`host:port`), a comma-separated
list of replicas given as IP literals (`10.0.0.5:50052,10.0.0.6:50052`,
`[fd00::5]:50052,[fd00::6]:50052`), or a DNS name that resolves to several
(`dns:///metering.sluice.svc:50052`, e.g. a Kubernetes headless Service). The channel connects to
every address, spreads calls round robin over those that report SERVING on `grpc.health.v1`
(so a replica that is draining or down gets no new calls), and re-resolves the DNS name when a
connection drops, finding replicas that came and went.

Lists take IP literals because gRPC's `ipv4:` and `ipv6:` targets do; names go through `dns:`.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from typing import Any

import grpc

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# Round robin over the replicas that pass gRPC health checking ("" = the server as a whole,
# which every Sluice server sets to NOT_SERVING when it starts draining).
SERVICE_CONFIG = json.dumps(
    {"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": ""}}
)
OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.service_config", SERVICE_CONFIG),
    # The configuration above is the one that applies, whatever DNS TXT records might say.
    ("grpc.service_config_disable_resolution", 1),
    # A restarted service is found again within about a second, not after gRPC's default backoff
    # of up to two minutes (which would keep the edge failing closed).
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
)


def target(addr: str) -> str:
    """The gRPC target for an address setting (see the module docstring).

    Raises ValueError for an empty setting, a list that names a host instead of an IP address,
    or a list that mixes IPv4 and IPv6.
    """
    parts = [part.strip() for part in addr.split(",") if part.strip()]
    if not parts:
        raise ValueError("empty gRPC address")
    if len(parts) == 1:
        return parts[0]
    families = set()
    for part in parts:
        if "://" in part or part.startswith(("ipv4:", "ipv6:", "dns:", "unix:")):
            raise ValueError(f"{part!r}: a list holds host:port entries only ({addr!r})")
        host, sep, port = part.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"{part!r} has no port ({addr!r})")
        try:
            ip = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
        except ValueError:
            raise ValueError(
                f"{part!r}: a list of replicas takes IP addresses; for a name resolving to "
                f"several, use dns:///{part}"
            ) from None
        families.add(ip.version)
    if len(families) > 1:
        raise ValueError(f"{addr!r} mixes IPv4 and IPv6 addresses; use one family")
    return f"ipv{families.pop()}:{','.join(parts)}"


def aio_channel(
    addr: str,
    *,
    options: tuple[tuple[str, Any], ...] = (),
    interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
) -> grpc.aio.Channel:
    """An asyncio channel to every replica `addr` names, balanced and health-checked;
    `interceptors` are those of `Tracing.client_interceptors()` (services.common.tracing),
    which carry the caller's trace to the servers."""
    return grpc.aio.insecure_channel(
        target(addr), options=[*OPTIONS, *options], interceptors=interceptors
    )


def sync_channel(addr: str, *, options: tuple[tuple[str, Any], ...] = ()) -> grpc.Channel:
    """The same for blocking callers (the CLI)."""
    return grpc.insecure_channel(target(addr), options=[*OPTIONS, *options])
