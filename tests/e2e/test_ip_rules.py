"""IP allowlists through the running stack: IPv4 and IPv6 peers, a trusted proxy's X-Forwarded-For,
and a direct client that tries to spoof that header.

Edge "edge" listens on 127.0.0.1, edge "edge-b" on ::1; only 127.0.0.2 is a trusted proxy
(SLUICE_TRUSTED_PROXIES), and a client binds to it to play that proxy.
"""

from __future__ import annotations

import httpx
import openai
import pytest
from openai import OpenAI

from tests.e2e.processes import Services

MODEL = "smollm2-135m-instruct"
PROXY = "127.0.0.2"


def client(base_url: str, key: str, source: str | None = None, xff: str | None = None) -> OpenAI:
    transport = httpx.HTTPTransport(local_address=source) if source else None
    headers = {"x-forwarded-for": xff} if xff else {}
    http = httpx.Client(transport=transport, headers=headers, timeout=60)
    return OpenAI(base_url=base_url, api_key=key, max_retries=0, http_client=http)


def allowed(base_url: str, key: str, source: str | None = None, xff: str | None = None) -> bool:
    with client(base_url, key, source, xff) as c:
        try:
            c.models.list()
        except openai.PermissionDeniedError as exc:
            assert exc.status_code == 403
            assert exc.code == "ip_not_allowed"
            return False
    return True


@pytest.fixture(scope="module")
def keys(gov: Services) -> dict[str, str]:
    org = "ip-rules"
    return {
        "v4": gov.new_key(org, "v4", "--allow-ip", "127.0.0.1/32"),
        "v6": gov.new_key(org, "v6", "--allow-ip", "::1"),
        "remote": gov.new_key(org, "remote", "--allow-ip", "203.0.113.0/24,2001:db8::/32"),
        "any": gov.new_key(org, "any"),
    }


def test_ipv4_and_ipv6_peers_against_their_allowlists(gov: Services, keys: dict[str, str]) -> None:
    v4_edge, v6_edge = gov.edges["edge"].base_url, gov.edges["edge-b"].base_url
    assert allowed(v4_edge, keys["v4"])
    assert not allowed(v6_edge, keys["v4"])
    assert allowed(v6_edge, keys["v6"])
    assert not allowed(v4_edge, keys["v6"])
    assert allowed(v4_edge, keys["any"]) and allowed(v6_edge, keys["any"])


def test_trusted_proxy_forwards_the_client_address(gov: Services, keys: dict[str, str]) -> None:
    edge = gov.edges["edge"].base_url
    assert allowed(edge, keys["remote"], source=PROXY, xff="203.0.113.9")
    assert allowed(edge, keys["remote"], source=PROXY, xff="2001:db8::7")
    # The right-most untrusted hop counts: a forged left-most entry changes nothing.
    assert allowed(edge, keys["remote"], source=PROXY, xff="198.51.100.1, 203.0.113.9")
    assert not allowed(edge, keys["remote"], source=PROXY, xff="203.0.113.9, 198.51.100.1")
    assert not allowed(edge, keys["remote"], source=PROXY, xff="198.51.100.1")
    # Seen through the proxy, the loopback client is 203.0.113.9, not 127.0.0.1.
    assert not allowed(edge, keys["v4"], source=PROXY, xff="203.0.113.9")


def test_untrusted_peer_cannot_spoof_forwarded_for(gov: Services, keys: dict[str, str]) -> None:
    for base in (gov.edges["edge"].base_url, gov.edges["edge-b"].base_url):
        assert not allowed(base, keys["remote"], xff="203.0.113.9")
        assert not allowed(base, keys["remote"], xff="2001:db8::7")


def test_refusal_is_openai_shaped_and_recorded(gov: Services, keys: dict[str, str]) -> None:
    with (
        client(gov.edges["edge-b"].base_url, keys["v4"]) as c,
        pytest.raises(openai.PermissionDeniedError) as err,
    ):
        c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=1
        )
    body = err.value.body
    assert isinstance(body, dict) and body["code"] == "ip_not_allowed"
    assert "::1" in body["message"] and keys["v4"] not in body["message"]
    rows = gov.cli("usage", "--org", "ip-rules", "--format", "csv").stdout.splitlines()
    assert "client_ip" in rows[0]
    assert any("rejected" in r and "::1" in r for r in rows[1:])
