"""Bring-your-own-key models through the running stack: the organization's OpenAI and Anthropic
credentials, used by the edge's provider backends against loopback servers that speak the
providers' documented wire formats, under the same governance as hosted models."""

from __future__ import annotations

import asyncio
import json
import time

import asyncpg
import httpx
import openai
import pytest

from tests.conftest import DEFAULT_PG_DSN
from tests.e2e.processes import ADMIN_TOKEN, Services
from tests.e2e.providers import CLAUDE, GPT, MESSAGES, client, received, script


def test_models_are_listed_only_for_orgs_with_credentials(
    gov: Services, byok: dict[str, str]
) -> None:
    with client(gov, byok["key"]) as c:
        ids = {m.id for m in c.models.list()}
    assert {CLAUDE, GPT, "smollm2-135m-instruct"} <= ids
    plain = gov.new_key(byok["org"] + "-none", "plain")
    with client(gov, plain) as c:
        ids = {m.id for m in c.models.list()}
        assert not any("/" in i for i in ids)
        with pytest.raises(openai.NotFoundError):
            c.chat.completions.create(model=CLAUDE, messages=MESSAGES)


def test_anthropic_stream_is_translated_with_upstream_usage(
    gov: Services, byok: dict[str, str]
) -> None:
    script(gov, "anthropic", reply="Hello there, friend.", prompt_tokens=23, completion_tokens=7)
    with client(gov, byok["key"]) as c:
        stream = c.chat.completions.create(
            model=CLAUDE,
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            stop=["END"],
            temperature=0.2,
        )
        chunks = list(stream)
    content = [ch for ch in chunks if ch.choices]
    assert all(ch.object == "chat.completion.chunk" and ch.model == CLAUDE for ch in chunks)
    assert content[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in content)
    assert text == "Hello there, friend."
    finishes = [ch.choices[0].finish_reason for ch in content if ch.choices[0].finish_reason]
    assert finishes == ["stop"]
    usage = chunks[-1].usage
    assert usage is not None and not chunks[-1].choices
    assert (usage.prompt_tokens, usage.completion_tokens) == (23, 7)

    (sent,) = received(gov, "anthropic")
    body = sent["body"]
    assert sent["path"] == "/v1/messages"
    assert body["system"] == "Be brief."
    assert body["messages"] == [{"role": "user", "content": "Say hello."}]
    assert body["stop_sequences"] == ["END"] and body["max_tokens"] > 0 and body["stream"]

    (row,) = gov.ledger(byok["org"])
    assert row["provider"] == "anthropic" and row["model"] == CLAUDE
    assert (row["prompt_tokens"], row["completion_tokens"], row["status"]) == (23, 7, "ok")


def test_openai_upstream_passes_through(gov: Services, byok: dict[str, str]) -> None:
    script(gov, "openai", reply="Hi!", prompt_tokens=9, completion_tokens=2)
    with client(gov, byok["key"]) as c:
        resp = c.chat.completions.create(model=GPT, messages=MESSAGES, max_tokens=5, seed=1)
    assert resp.choices[0].message.content == "Hi!"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None and resp.usage.total_tokens == 11
    (sent,) = received(gov, "openai")
    # Forwarded whole: only the model name is the provider's.
    assert sent["body"] == {
        "model": "gpt-4o-mini",
        "messages": MESSAGES,
        "max_tokens": 5,
        "seed": 1,
    }


def test_provider_key_only_reaches_the_provider(gov: Services, byok: dict[str, str]) -> None:
    script(gov, "anthropic", reply="ok")
    script(gov, "openai", reply="ok")
    seen = []
    with client(gov, byok["key"]) as c:
        for model in (CLAUDE, GPT):
            r = c.chat.completions.with_raw_response.create(model=model, messages=MESSAGES)
            seen.append(r.text + json.dumps(dict(r.headers)))
    (to_anthropic,) = received(gov, "anthropic")
    (to_openai,) = received(gov, "openai")
    assert to_anthropic["headers"]["x-api-key"] == byok["anthropic"]
    assert to_openai["headers"]["authorization"] == f"Bearer {byok['openai']}"

    listing = gov.cli("providers", "list", "--org", byok["org"]).stdout
    with httpx.Client(headers={"authorization": f"Bearer {ADMIN_TOKEN}"}) as http:
        admin = http.get(gov.edges["edge"].admin_url + "/providers").text
    db_text = asyncio.run(dump_database(gov.env["SLUICE_DATABASE_URL"]))
    for secret in (byok["anthropic"], byok["openai"]):
        for where, text in (
            ("responses", "".join(seen)),
            ("cli", listing),
            ("admin api", admin),
            ("logs", gov.logs()),
            ("database", db_text),
        ):
            assert secret not in text, f"a provider key leaked into the {where}"
            assert secret[-20:] not in text, f"part of a provider key leaked into the {where}"


async def dump_database(url: str) -> str:
    """Every row of every table, as text: what someone holding a copy of the database sees."""
    dsn = url.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(dsn or DEFAULT_PG_DSN)
    try:
        tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        out = []
        for t in tables:
            for row in await conn.fetch(f'SELECT * FROM "{t["tablename"]}"'):
                out.append(repr(dict(row)))
        return "\n".join(out)
    finally:
        await conn.close()


def test_governance_refuses_byok_like_hosted(gov: Services, byok: dict[str, str]) -> None:
    script(gov, "anthropic", reply="ok", prompt_tokens=5, completion_tokens=1)
    limited = gov.new_key(byok["org"], "rpm2", "--rpm", "2")
    with client(gov, limited) as c:
        for _ in range(2):
            c.chat.completions.create(model=CLAUDE, messages=MESSAGES, max_tokens=4)
        with pytest.raises(openai.RateLimitError) as err:
            c.chat.completions.create(model=CLAUDE, messages=MESSAGES, max_tokens=4)
    assert err.value.code == "rate_limit_exceeded"
    assert err.value.response.headers["retry-after"]

    broke = gov.new_key(byok["org"], "tiny", "--budget-tokens", "50", "--budget-period", "day")
    with client(gov, broke) as c, pytest.raises(openai.RateLimitError) as err:
        for _ in range(5):
            c.chat.completions.create(model=CLAUDE, messages=MESSAGES, max_tokens=4)
    assert err.value.code == "insufficient_quota"
    assert len(received(gov, "anthropic")) == 2  # refused requests never reached the provider


def test_failure_before_output_is_retried(gov: Services, byok: dict[str, str]) -> None:
    script(gov, "anthropic", reply="after retry", fail_next=2, fail_status=529, retry_after="0")
    with client(gov, byok["key"]) as c:
        resp = c.chat.completions.create(model=CLAUDE, messages=MESSAGES)
    assert resp.choices[0].message.content == "after retry"
    outcomes = [r["outcome"] for r in received(gov, "anthropic")]
    assert outcomes == ["failed", "failed", "completed"]


def test_upstream_credential_rejection_is_not_the_clients_key(
    gov: Services, byok: dict[str, str]
) -> None:
    script(gov, "openai", expected_key="sk-proj-some-other-key")
    with client(gov, byok["key"]) as c, pytest.raises(openai.APIStatusError) as err:
        c.chat.completions.create(model=GPT, messages=MESSAGES)
    assert err.value.status_code == 502
    assert err.value.code == "upstream_authentication_failed"
    assert byok["openai"] not in err.value.message


def test_failure_mid_stream_ends_with_an_error_and_bills_what_was_delivered(
    gov: Services, byok: dict[str, str]
) -> None:
    script(
        gov,
        "anthropic",
        chunks=["one ", "two ", "three ", "four"],
        prompt_tokens=13,
        drop_after_chunks=2,
    )
    got = []
    with client(gov, byok["key"]) as c, pytest.raises(openai.APIError) as err:
        for chunk in c.chat.completions.create(model=CLAUDE, messages=MESSAGES, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                got.append(chunk.choices[0].delta.content)
    assert "".join(got) == "one two "
    assert "upstream" in str(err.value.message).lower() or "stream" in str(err.value.message)
    assert len(received(gov, "anthropic")) == 1  # not retried once output had begun
    (row,) = gov.ledger(byok["org"])
    assert row["status"] == "error"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (13, 2)


def test_a_client_gone_mid_stream_closes_the_provider_stream_and_is_billed(
    gov: Services, byok: dict[str, str]
) -> None:
    script(gov, "openai", chunks=[f"t{i} " for i in range(200)], chunk_delay_s=0.02)
    with httpx.stream(
        "POST",
        gov.edges["edge"].base_url + "/chat/completions",
        json={"model": GPT, "messages": MESSAGES, "stream": True},
        headers={"authorization": f"Bearer {byok['key']}"},
        timeout=30,
    ) as resp:
        lines = resp.iter_lines()
        got = [line for line, _ in zip(lines, range(12), strict=False) if line]
    assert len(got) >= 5
    for _ in range(100):
        outcomes = [r["outcome"] for r in received(gov, "openai")]
        rows = gov.ledger(byok["org"])
        if outcomes == ["aborted"] and rows:
            break
        time.sleep(0.1)
    assert outcomes == ["aborted"]
    (row,) = rows
    assert row["status"] == "cancelled" and 0 < int(row["completion_tokens"]) < 200


def test_the_legacy_completions_endpoint_names_its_models(
    gov: Services, byok: dict[str, str]
) -> None:
    with client(gov, byok["key"]) as c, pytest.raises(openai.BadRequestError) as err:
        c.completions.create(model=GPT, prompt="Say hello.")
    assert err.value.param == "model"
    assert received(gov, "openai") == []
