"""API keys through the running stack: projects, allowed models, expiry, revocation and rotation on
two edges at once, all with the official `openai` client against PostgreSQL."""

from __future__ import annotations

import json
import time

import openai
import pytest
from openai import OpenAI

from tests.e2e.processes import Services

MODEL = "smollm2-135m-instruct"
# Successful authentications are cached by each edge for 1 s; revocation must show within 2 s.
REVOCATION_BOUND_S = 2.0


def ask(base_url: str, key: str, max_tokens: int = 1) -> openai.types.chat.ChatCompletion:
    with OpenAI(base_url=base_url, api_key=key, max_retries=0) as client:
        return client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=max_tokens,
            temperature=0,
        )


def works(base_url: str, key: str) -> bool:
    try:
        ask(base_url, key)
    except openai.AuthenticationError:
        return False
    return True


def key_row(gov: Services, org: str) -> dict[str, object]:
    rows = json.loads(gov.cli("keys", "list", "--org", org, "--format", "json").stdout)
    assert len(rows) == 1
    row: dict[str, object] = rows[0]
    return row


def test_key_in_named_project_is_recorded_under_it(gov: Services, org: str) -> None:
    gov.cli("orgs", "create", org)
    gov.cli("projects", "create", "--org", org, "--name", "search-app")
    key = gov.new_key(org, "app", "--project", "search-app")
    default_key = gov.new_key(org, "other")
    edge = gov.edges["edge"].base_url
    ask(edge, key)
    ask(edge, default_key)
    projects = json.loads(gov.cli("projects", "list", "--org", org, "--format", "json").stdout)
    ids = {p["name"]: p["id"] for p in projects}
    assert set(ids) == {"default", "search-app"}
    recorded = {r["project_id"] for r in gov.ledger(org)}
    assert recorded == {ids["search-app"], ids["default"]}


def test_listing_never_shows_secrets(gov: Services, org: str) -> None:
    key = gov.new_key(org, "listed")
    listing = gov.cli("keys", "list", "--org", org).stdout
    assert key not in listing and key[10:] not in listing
    assert key[-4:] in listing  # the fingerprint


def test_allowed_models_refuse_others_with_403(gov: Services, org: str) -> None:
    only_upstream = gov.new_key(org, "narrow", "--models", "openai/gpt-4o-mini")
    hosted = gov.new_key(org, "hosted", "--models", MODEL)
    edge = gov.edges["edge"].base_url
    assert ask(edge, hosted).choices[0].finish_reason in ("length", "stop")
    with pytest.raises(openai.PermissionDeniedError) as err:
        ask(edge, only_upstream)
    assert err.value.status_code == 403
    assert err.value.code == "model_not_allowed"
    # The refusal is in the ledger too, attributed to the key.
    statuses = sorted(str(r["status"]) for r in gov.ledger(org))
    assert statuses == ["ok", "rejected"]


def test_expired_key_stops_working(gov: Services, org: str) -> None:
    key = gov.new_key(org, "short-lived", "--expires-in", "3s")
    edge = gov.edges["edge"].base_url
    assert works(edge, key)
    time.sleep(3.0 + 1.2)  # past expiry, and past the edge's 1 s cache
    with pytest.raises(openai.AuthenticationError) as err:
        ask(edge, key)
    assert "expired" in err.value.message


def test_revoked_key_fails_within_two_seconds_on_both_edges(gov: Services, org: str) -> None:
    key = gov.new_key(org, "to-revoke")
    edges = [gov.edges["edge"].base_url, gov.edges["edge-b"].base_url]
    for base in edges:  # warm both edges' caches with a success
        assert works(base, key)
    gov.cli("keys", "revoke", key)  # by the secret itself; the id works too
    revoked_at = time.monotonic()
    time.sleep(REVOCATION_BOUND_S)
    for base in edges:
        with pytest.raises(openai.AuthenticationError):
            ask(base, key)
    assert time.monotonic() - revoked_at < REVOCATION_BOUND_S + 5  # sanity: no long stall
    assert key_row(gov, org)["state"] == "revoked"


def test_rotated_key_old_secret_works_until_grace_ends(gov: Services, org: str) -> None:
    old = gov.new_key(org, "rotating")
    edges = [gov.edges["edge"].base_url, gov.edges["edge-b"].base_url]
    assert works(edges[0], old)
    key_id = str(key_row(gov, org)["id"])
    out = gov.cli("keys", "rotate", key_id, "--grace", "4s").stdout
    new = out.strip().splitlines()[-1]
    assert new != old and new.startswith("sk-sluice-")
    rotated_at = time.monotonic()
    for base in edges:
        assert works(base, new)
        assert works(base, old)  # inside the grace period
    time.sleep(max(0.0, rotated_at + 4.0 + REVOCATION_BOUND_S - time.monotonic()))
    for base in edges:
        with pytest.raises(openai.AuthenticationError):
            ask(base, old)
        assert works(base, new)
    # One key throughout: usage of both secrets is attributed to the same key id.
    assert {r["key_id"] for r in gov.ledger(org)} == {key_id}
