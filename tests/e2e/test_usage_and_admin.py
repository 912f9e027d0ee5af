"""The usage ledger and the operator's admin API through the running stack: records and totals as
JSON and CSV, members reading only their own organization, and the admin token's boundary."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import httpx
import openai
import pytest
from openai import OpenAI

from tests.e2e.processes import ADMIN_TOKEN, Services

MODEL = "smollm2-135m-instruct"


def admin(gov: Services) -> httpx.Client:
    return httpx.Client(
        base_url=gov.edges["edge"].admin_url,
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=30,
    )


def chat(base_url: str, key: str) -> None:
    with OpenAI(base_url=base_url, api_key=key, max_retries=0) as client:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2, temperature=0
        )


def test_admin_api_manages_orgs_projects_keys_and_plans(gov: Services, org: str) -> None:
    with admin(gov) as http:
        created = http.post("/organizations", json={"name": org, "plan": "team"})
        assert created.status_code == 201, created.text
        assert created.json()["policy"]["plan"] == "team"
        project = http.post("/projects", json={"org": org, "name": "bot"}).json()
        resp = http.post(
            "/keys",
            json={
                "org": org,
                "name": "admin-made",
                "project": "bot",
                "quota": {"rpm": 7},
                "allowed_models": [MODEL],
            },
        )
        assert resp.status_code == 201, resp.text
        body = resp.json()
        secret, key_id = body["secret"], body["key"]["id"]
        assert body["key"]["project_id"] == project["id"]

        with OpenAI(base_url=gov.edges["edge"].base_url, api_key=secret, max_retries=0) as c:
            r = c.chat.completions.with_raw_response.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=1
            )
        assert r.headers["x-ratelimit-limit-requests"] == "7"

        listed = http.get("/keys", params={"org": org}).json()["data"]
        assert [k["id"] for k in listed] == [key_id]
        assert secret not in http.get("/keys", params={"org": org}).text

        patched = http.patch(f"/organizations/{org}", json={"plan": "business"}).json()
        assert patched["policy"]["plan"] == "business"
        plans = {p["name"] for p in http.get("/plans").json()["data"]}
        assert {"free", "team", "business"} <= plans

        revoked = http.post(f"/keys/{key_id}/revoke").json()
        assert revoked["state"] == "revoked"

        bad = http.post("/keys", json={"org": org, "name": "x", "nonsense": 1})
        assert bad.status_code == 400 and bad.json()["error"]["message"]


def test_admin_token_and_api_keys_are_not_interchangeable(gov: Services, org: str) -> None:
    key = gov.new_key(org, "member")
    edge = gov.edges["edge"]
    with httpx.Client(timeout=30) as http:
        as_key = http.get(
            f"{edge.admin_url}/organizations", headers={"authorization": f"Bearer {key}"}
        )
        assert as_key.status_code == 401
        assert as_key.json()["error"]["code"] == "invalid_admin_token"
        missing = http.get(f"{edge.admin_url}/organizations")
        assert missing.status_code == 401
    with (
        OpenAI(base_url=edge.base_url, api_key=ADMIN_TOKEN, max_retries=0) as client,
        pytest.raises(openai.AuthenticationError),
    ):
        client.models.list()


def test_members_read_their_own_org_usage_only(gov: Services, org: str) -> None:
    mine, theirs = gov.new_key(org, "mine"), gov.new_key(org + "-other", "theirs")
    base = gov.edges["edge"].base_url
    chat(base, mine)
    chat(base, mine)
    chat(base, theirs)
    with OpenAI(base_url=base, api_key=mine, max_retries=0) as client:
        page = client.get("/usage", cast_to=object)
        assert isinstance(page, dict)
        rows = page["data"]
        assert len(rows) == 2 and {r["org_id"] for r in rows} == {rows[0]["org_id"]}
        assert all(r["status"] == "ok" and r["prompt_tokens"] > 0 for r in rows)
        # Asking for another organization's data gives nothing of it.
        other_org = client.get("/usage", cast_to=object, options={"params": {"org_id": "x"}})
        assert isinstance(other_org, dict) and len(other_org["data"]) == 2
        totals = client.get(
            "/usage/totals", cast_to=object, options={"params": {"group_by": "model"}}
        )
        assert isinstance(totals, dict)
        (model_total,) = totals["data"]
        assert model_total["group"] == MODEL and model_total["requests"] == 2
        assert model_total["total_tokens"] == sum(
            r["prompt_tokens"] + r["completion_tokens"] for r in rows
        )


def test_ledger_queries_as_json_and_csv(gov: Services, org: str) -> None:
    key = gov.new_key(org, "reporting")
    base = gov.edges["edge"].base_url
    for _ in range(3):
        chat(base, key)
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    with admin(gov) as http:
        records = http.get("/usage", params={"org": org, "model": MODEL}).json()["data"]
        assert len(records) == 3
        for r in records:
            assert r["key_id"].startswith("key_") and r["client_ip"] == "127.0.0.1"
            assert r["model_digest"].startswith("sha256:") and r["provider"] == "sluice"
            assert r["latency_ms"] > 0 and r["ttft_ms"] > 0
            assert key not in str(r)
        by_day = http.get("/usage/totals", params={"org": org, "group_by": "day"}).json()
        assert [(d["group"], d["requests"]) for d in by_day["data"]] == [(today, 3)]
        by_key = http.get("/usage/totals", params={"org": org, "group_by": "key", "format": "csv"})
        assert by_key.headers["content-type"].startswith("text/csv")
        (row,) = list(csv.DictReader(io.StringIO(by_key.text)))
        assert row["group"] == records[0]["key_id"] and row["requests"] == "3"
        future = int(datetime.now(UTC).timestamp()) + 3600
        empty = http.get("/usage", params={"org": org, "start_time": future}).json()
        assert empty["data"] == []
    cli_csv = gov.cli("usage", "--org", org, "--group-by", "day", "--format", "csv").stdout
    assert today in cli_csv
