"""Rate limits through the running stack: requests and tokens per minute with OpenAI's
x-ratelimit-* headers, concurrency, and an organization's plan as a ceiling that changes at once.

The limits run on both kinds of window: one metering process's memory (`gov`) and Redis shared
by two metering replicas behind two edges (`fleet`)."""

from __future__ import annotations

import threading

import openai
import pytest
from openai import OpenAI

from tests.e2e.processes import Services

MODEL = "smollm2-135m-instruct"
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(params=["gov", "fleet"])
def limited(request: pytest.FixtureRequest) -> Services:
    """The stack whose limits are tested: in-memory windows, or Redis across replicas."""
    services: Services = request.getfixturevalue(request.param)
    return services


def raw(client: OpenAI, max_tokens: int = 1) -> openai.APIResponse:  # type: ignore[type-arg]
    return client.chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=max_tokens, temperature=0
    )


def test_rpm_sixth_request_is_refused_after_correct_headers(limited: Services, org: str) -> None:
    key = limited.new_key(org, "rpm", "--rpm", "5")
    # Both edges count against the same limit: it lives in metering.
    edges = [limited.edges["edge"].base_url, limited.edges["edge-b"].base_url]
    seen = []
    for i in range(5):
        with OpenAI(base_url=edges[i % 2], api_key=key, max_retries=0) as client:
            resp = raw(client)
        assert resp.status_code == 200
        seen.append(
            (
                resp.headers["x-ratelimit-limit-requests"],
                resp.headers["x-ratelimit-remaining-requests"],
            )
        )
        assert resp.headers["x-ratelimit-reset-requests"]
    assert seen == [("5", str(4 - i)) for i in range(5)]
    with (
        OpenAI(base_url=edges[1], api_key=key, max_retries=0) as client,
        pytest.raises(openai.RateLimitError) as err,
    ):
        raw(client)
    exc = err.value
    assert exc.code == "rate_limit_exceeded"
    assert 1 <= int(exc.response.headers["retry-after"]) <= 60
    assert exc.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert "requests per minute" in exc.message.lower()


def test_tpm_refuses_once_reserved_tokens_exceed_the_limit(limited: Services, org: str) -> None:
    key = limited.new_key(org, "tpm", "--tpm", "600")
    remaining = []
    with (
        OpenAI(base_url=limited.edges["edge"].base_url, api_key=key, max_retries=0) as client,
        pytest.raises(openai.RateLimitError) as err,
    ):
        for _ in range(20):
            resp = raw(client, max_tokens=8)
            assert resp.headers["x-ratelimit-limit-tokens"] == "600"
            remaining.append(int(resp.headers["x-ratelimit-remaining-tokens"]))
    assert len(remaining) >= 2
    assert remaining == sorted(remaining, reverse=True) and remaining[-1] < 600
    assert err.value.code == "rate_limit_exceeded"
    assert "tokens per minute" in err.value.message.lower()
    assert int(err.value.response.headers["retry-after"]) >= 1


def test_concurrent_requests_beyond_the_limit_are_refused(limited: Services, org: str) -> None:
    key = limited.new_key(org, "conc", "--max-concurrent", "1")
    base = limited.edges["edge"].base_url
    with OpenAI(base_url=base, api_key=key, max_retries=0) as client:
        started = threading.Event()

        def long_stream() -> None:
            stream = client.chat.completions.create(
                model=MODEL, messages=MESSAGES, max_tokens=64, temperature=0, stream=True
            )
            for _ in stream:
                started.set()

        t = threading.Thread(target=long_stream)
        t.start()
        assert started.wait(60)
        with pytest.raises(openai.RateLimitError) as err:
            raw(client)
        t.join()
        assert err.value.code == "rate_limit_exceeded"
        assert raw(client).status_code == 200  # the slot is free again


def test_plan_is_a_ceiling_and_a_change_applies_at_once(gov: Services, org: str) -> None:
    # "At once" on the replica that wrote it; the others see it within their plan cache's
    # second (services/metering/plans.py), so this runs on one metering.
    plan = f"tiny-{org[-6:]}"
    gov.cli("plans", "set", plan, "--rpm", "2", "--monthly-tokens", "1000000")
    gov.cli("orgs", "create", org, "--plan", plan)
    key = gov.new_key(org, "plain", "--rpm", "100")  # the key's own limit is looser
    with OpenAI(base_url=gov.edges["edge"].base_url, api_key=key, max_retries=0) as client:
        first = raw(client)
        assert first.headers["x-ratelimit-limit-requests"] == "2"  # the tightest limit shows
        raw(client)
        with pytest.raises(openai.RateLimitError):
            raw(client)
        gov.cli("orgs", "set-plan", org, "team")
        assert raw(client).headers["x-ratelimit-limit-requests"] == "100"


def test_plan_max_context_caps_each_request(gov: Services, org: str) -> None:
    plan = f"short-{org[-6:]}"
    gov.cli("plans", "set", plan, "--max-context", "64")
    gov.cli("orgs", "create", org, "--plan", plan)
    key = gov.new_key(org, "ctx")
    with OpenAI(base_url=gov.edges["edge"].base_url, api_key=key, max_retries=0) as client:
        assert raw(client, max_tokens=8).status_code == 200
        with pytest.raises(openai.BadRequestError) as err:
            raw(client, max_tokens=100)
    assert err.value.code == "context_length_exceeded"
    assert "64" in err.value.message
