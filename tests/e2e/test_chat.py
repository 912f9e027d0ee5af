"""Chat completions through the whole stack with the official `openai` client."""

from __future__ import annotations

import concurrent.futures
import json

import pytest
from openai import OpenAI

from tests.e2e.conftest import Stack

MODEL = "smollm2-135m-instruct"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


def usage_records(stack: Stack) -> list[dict[str, object]]:
    out = stack.cli("usage", "--json", "--limit", "1000").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_chat_answers_paris(stack: Stack) -> None:
    resp = stack.client().chat.completions.create(model=MODEL, messages=FRANCE, temperature=0)
    choice = resp.choices[0]
    assert "Paris" in (choice.message.content or "")
    assert choice.finish_reason in ("stop", "length")
    assert resp.object == "chat.completion"
    assert resp.model.startswith(MODEL + "@sha256:")
    assert resp.system_fingerprint and resp.system_fingerprint.startswith("fp_")
    assert resp.usage is not None
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert resp.usage.completion_tokens > 0


def test_streaming_with_usage(stack: Stack) -> None:
    stream = stack.client().chat.completions.create(
        model=MODEL,
        messages=FRANCE,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    content = [c for c in chunks if c.choices and c.choices[0].delta.content]
    finishes = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(content) > 3
    assert len(finishes) == 1
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None and last.usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1


def test_usage_ledger_matches_responses(stack: Stack) -> None:
    client = stack.client()
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=FRANCE, temperature=0, max_tokens=12
    )
    resp = raw.parse()
    request_id = raw.headers["x-request-id"]
    stream = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=FRANCE,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    stream_id = stream.headers["x-request-id"]
    stream_usage = list(stream.parse())[-1].usage
    records = {r["request_id"]: r for r in usage_records(stack)}
    for rid, usage in ((request_id, resp.usage), (stream_id, stream_usage)):
        rec = records[rid]
        assert usage is not None
        assert rec["prompt_tokens"] == usage.prompt_tokens
        assert rec["completion_tokens"] == usage.completion_tokens
        assert rec["status"] == "ok"
        assert rec["model"] == MODEL
        assert str(rec["model_digest"]).startswith("sha256:")
        assert stack.dev_key not in json.dumps(rec)


def test_seeded_sampling_is_reproducible(stack: Stack) -> None:
    client = stack.client()

    def ask() -> str:
        resp = client.chat.completions.create(
            model=MODEL, messages=FRANCE, temperature=0.9, seed=1234, max_tokens=24
        )
        return resp.choices[0].message.content or ""

    first, second = ask(), ask()
    assert first == second and first


def test_max_tokens_stops_with_length(stack: Stack) -> None:
    resp = stack.client().chat.completions.create(
        model=MODEL, messages=FRANCE, temperature=0, max_tokens=5
    )
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.completion_tokens == 5


def test_stop_string_ends_output_before_it(stack: Stack) -> None:
    client = stack.client()
    full = client.chat.completions.create(
        model=MODEL, messages=FRANCE, temperature=0, max_tokens=20
    )
    text = full.choices[0].message.content or ""
    assert "Paris" in text
    cut = client.chat.completions.create(
        model=MODEL, messages=FRANCE, temperature=0, max_tokens=20, stop=["Paris"]
    )
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == text[: text.index("Paris")]


def test_concurrent_requests_each_get_their_own_answer(stack: Stack) -> None:
    questions = [
        "What is the capital of France?",
        "Name three colors.",
        "What is 2 + 2?",
        "Write one word about the sea.",
    ]

    def ask(q: str) -> str:
        # A client per call, closed on the thread that used it: the SDK's connection pool keeps
        # per-thread connections that a close from another thread would leave open.
        with OpenAI(base_url=stack.base_url, api_key=stack.dev_key, max_retries=0) as client:
            resp = client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": q}],
                temperature=0,
                max_tokens=30,
            )
        return resp.choices[0].message.content or ""

    sequential = [ask(q) for q in questions]
    with concurrent.futures.ThreadPoolExecutor(len(questions)) as pool:
        concurrent_answers = list(pool.map(ask, questions))
    assert concurrent_answers == sequential


@pytest.mark.parametrize("stream", [False, True])
def test_legacy_completions(stack: Stack, stream: bool) -> None:
    client = stack.client()
    if stream:
        chunks = list(
            client.completions.create(
                model=MODEL,
                prompt="The capital of France is",
                max_tokens=8,
                temperature=0,
                stream=True,
            )
        )
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        assert sum(1 for c in chunks if c.choices and c.choices[0].finish_reason) == 1
    else:
        resp = client.completions.create(
            model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0
        )
        assert resp.object == "text_completion"
        text = resp.choices[0].text
        assert resp.choices[0].finish_reason == "length"
        assert resp.usage is not None and resp.usage.completion_tokens == 8
    assert text.strip()


def test_models_endpoint(stack: Stack) -> None:
    client = stack.client()
    ids = [m.id for m in client.models.list()]
    assert MODEL in ids
    assert client.models.retrieve(MODEL).owned_by == "sluice"
