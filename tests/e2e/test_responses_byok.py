"""The Responses API on bring-your-own-key models through the running stack, with the official
`openai` SDK: `openai/<model>` passed to the provider's /v1/responses as sent and relayed,
`anthropic/<model>` translated onto the chat path with Sluice keeping the conversation; both
streamed and not, tool loops, usage equal to the ledger's record, and stored responses that
belong to one organization only."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.processes import Services
from tests.e2e.providers import CLAUDE, GPT, client, control, received, script

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
CALLS = [{"name": "get_weather", "arguments": '{"city": "Paris"}'}]
STREAM_ORDER = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


def ok_row(gov: Services, org: str) -> dict[str, Any]:
    rows = [r for r in gov.ledger(org) if r["status"] == "ok"]
    return rows[0]


def collapsed(kinds: list[str]) -> list[str]:
    """Event types with runs of deltas counted once."""
    out: list[str] = []
    for kind in kinds:
        if not (out and kind == out[-1] and kind.endswith(".delta")):
            out.append(kind)
    return out


@pytest.mark.parametrize("model", [GPT, CLAUDE])
def test_a_text_answer_and_its_stream(gov: Services, byok: dict[str, str], model: str) -> None:
    provider = model.split("/")[0]
    script(gov, provider, reply="Hello from the provider.", prompt_tokens=17)
    with client(gov, byok["key"]) as c:
        whole = c.responses.create(model=model, input="Say hello.", instructions="Be brief.")
        assert whole.output_text == "Hello from the provider."
        assert whole.status == "completed" and whole.model.startswith(model)
        assert whole.usage is not None
        row = ok_row(gov, byok["org"])
        assert (row["endpoint"], row["provider"], row["model"]) == (
            "/v1/responses",
            provider,
            model,
        )
        assert (row["prompt_tokens"], row["completion_tokens"]) == (
            whole.usage.input_tokens,
            whole.usage.output_tokens,
        )
        assert whole.usage.input_tokens == 17

        with c.responses.stream(model=model, input="Say hello.", instructions="Be brief.") as s:
            kinds = [event.type for event in s]
            final = s.get_final_response()
    assert collapsed(kinds) == STREAM_ORDER
    assert final.output_text == whole.output_text
    assert final.usage is not None and final.usage.output_tokens == whole.usage.output_tokens
    rows = [r for r in gov.ledger(byok["org"]) if r["status"] == "ok"]
    assert len(rows) == 2 and rows[0]["completion_tokens"] == final.usage.output_tokens


def test_openai_gets_the_body_as_sent(gov: Services, byok: dict[str, str]) -> None:
    script(gov, "openai", reply="Fine.")
    body = {
        "model": GPT,
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "Hi"}]}],
        "tools": [WEATHER, {"type": "web_search"}],
        "include": ["reasoning.encrypted_content"],
        "reasoning": {"effort": "low"},
        "store": False,
        "metadata": {"team": "search"},
        "max_output_tokens": 64,
        "a_field_from_next_month": {"nested": [1, None]},
    }
    resp = httpx.post(
        gov.edges["edge"].base_url + "/responses",
        json=body,
        headers={"authorization": f"Bearer {byok['key']}"},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    (sent,) = received(gov, "openai")
    assert sent["path"] == "/v1/responses"
    assert sent["body"] == {**body, "model": "gpt-4o-mini"}
    assert resp.json()["model"] == GPT
    assert resp.headers["x-request-id"].startswith("req-")


def test_a_plans_cap_lowers_max_output_tokens(gov: Services, byok: dict[str, str]) -> None:
    gov.cli("orgs", "set-plan", byok["org"], "free")  # max_context 4096
    script(gov, "openai", reply="Fine.")
    with client(gov, byok["key"]) as c:
        c.responses.create(model=GPT, input="Hi", max_output_tokens=100_000)
        c.responses.create(model=GPT, input="Hi")
    sent = [r["body"]["max_output_tokens"] for r in received(gov, "openai")]
    assert sent == [4096, 4096]


@pytest.mark.parametrize("model", [GPT, CLAUDE])
@pytest.mark.parametrize("chained", [False, True])
def test_a_function_tool_loop(
    gov: Services, byok: dict[str, str], model: str, chained: bool
) -> None:
    provider = model.split("/")[0]
    script(gov, provider, tool_calls=CALLS, reply="")
    with client(gov, byok["key"]) as c:
        first = c.responses.create(model=model, input="Weather in Paris?", tools=[WEATHER])  # type: ignore[list-item]
        (call,) = first.output
        assert call.type == "function_call" and call.name == "get_weather"
        assert json.loads(call.arguments) == {"city": "Paris"}
        # The next answer, keeping what the stand-in stored (its responses) and received.
        control(
            gov,
            provider,
            "POST",
            "/_control/script",
            tool_calls=CALLS,
            reply="It is sunny in Paris.",
        )
        result = {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"}
        if chained:
            second = c.responses.create(
                model=model,
                input=[result],
                previous_response_id=first.id,
                tools=[WEATHER],  # type: ignore[list-item]
            )
        else:
            whole: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
            whole += [item.model_dump(exclude_none=True) for item in first.output] + [result]
            second = c.responses.create(model=model, input=whole, tools=[WEATHER])  # type: ignore[list-item]
    assert second.output_text == "It is sunny in Paris."
    sent = received(gov, provider)[-1]
    if provider == "openai":
        assert sent["body"].get("previous_response_id") == (first.id if chained else None)
        return
    # Anthropic got the whole conversation either way: Sluice kept the first turn.
    messages = sent["body"]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"][0]["type"] == "tool_use"
    assert messages[2]["content"][0] == {
        "type": "tool_result",
        "tool_use_id": call.call_id,
        "content": "Sunny, 21 C",
    }


def test_a_streamed_function_call_from_anthropic(gov: Services, byok: dict[str, str]) -> None:
    script(gov, "anthropic", tool_calls=CALLS, reply="Let me check.")
    with (
        client(gov, byok["key"]) as c,
        c.responses.stream(model=CLAUDE, input="Weather?", tools=[WEATHER]) as s,  # type: ignore[list-item]
    ):
        kinds = collapsed([event.type for event in s])
        final = s.get_final_response()
    assert kinds == [
        *STREAM_ORDER[:-1],
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    message, call = final.output
    assert final.output_text == "Let me check."
    assert call.type == "function_call" and json.loads(call.arguments) == {"city": "Paris"}


def test_anthropic_json_schema(gov: Services, byok: dict[str, str]) -> None:
    script(gov, "anthropic", reply='{"city": "Paris"}')
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "name": "place", "schema": schema, "strict": True}
    with client(gov, byok["key"]) as c:
        resp = c.responses.create(model=CLAUDE, input="Paris as JSON", text={"format": fmt})  # type: ignore[typeddict-item]
    assert json.loads(resp.output_text) == {"city": "Paris"}
    (sent,) = received(gov, "anthropic")
    assert sent["body"]["output_config"] == {"format": {"type": "json_schema", "schema": schema}}


def test_stored_responses_are_the_organizations_own(gov: Services, byok: dict[str, str]) -> None:
    other_org = byok["org"] + "-b"
    gov.cli("orgs", "create", other_org)
    other_key = gov.new_key(other_org, "other")
    script(gov, "anthropic", reply="Remember: blue.")
    with client(gov, byok["key"]) as c, client(gov, other_key) as o:
        kept = c.responses.create(model=CLAUDE, input="My favourite colour is blue.")
        assert kept.id.startswith("resp_sluice_") and kept.store
        assert c.responses.retrieve(kept.id).model_dump() == kept.model_dump()
        with pytest.raises(openai.NotFoundError):
            o.responses.retrieve(kept.id)
        with pytest.raises(openai.NotFoundError):
            o.responses.delete(kept.id)
        with pytest.raises(openai.BadRequestError) as err:
            o.responses.create(model=CLAUDE, input="Hi", previous_response_id=kept.id)
        assert err.value.code == "previous_response_not_found"
        follow = c.responses.create(
            model=CLAUDE, input="And my colour?", previous_response_id=kept.id
        )
        assert follow.previous_response_id == kept.id
        c.responses.delete(kept.id)
        with pytest.raises(openai.NotFoundError):
            c.responses.retrieve(kept.id)
        unkept = c.responses.create(model=CLAUDE, input="Hi", store=False)
        with pytest.raises(openai.NotFoundError):
            c.responses.retrieve(unkept.id)
    sent = received(gov, "anthropic")[1]["body"]["messages"]
    assert sent == [
        {"role": "user", "content": "My favourite colour is blue."},
        {"role": "assistant", "content": "Remember: blue."},
        {"role": "user", "content": "And my colour?"},
    ]


def test_openais_stored_responses_pass_through(gov: Services, byok: dict[str, str]) -> None:
    script(gov, "openai", reply="Kept by OpenAI.")
    with client(gov, byok["key"]) as c:
        kept = c.responses.create(model=GPT, input="Hi")
        assert not kept.id.startswith("resp_sluice_")
        got = c.responses.retrieve(kept.id)
        assert (got.output_text, got.model) == ("Kept by OpenAI.", GPT)
        c.responses.delete(kept.id)
        with pytest.raises(openai.NotFoundError):
            c.responses.retrieve(kept.id)
    assert [(r["method"], r["path"]) for r in received(gov, "openai")] == [
        ("POST", "/v1/responses"),
        ("GET", f"/v1/responses/{kept.id}"),
        ("DELETE", f"/v1/responses/{kept.id}"),
        ("GET", f"/v1/responses/{kept.id}"),
    ]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"background": True}, "background"),
        ({"include": ["message.output_text.logprobs"]}, "include"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format"),
        ({"previous_response_id": "resp_0123456789abcdef"}, "previous_response_id"),
    ],
)
def test_what_anthropic_models_cannot_do_is_refused_by_name(
    gov: Services, byok: dict[str, str], extra: dict[str, Any], param: str
) -> None:
    script(gov, "anthropic")
    with client(gov, byok["key"]) as c, pytest.raises(openai.BadRequestError) as err:
        c.responses.create(model=CLAUDE, input="Hi", **extra)
    assert err.value.param == param
    assert received(gov, "anthropic") == []


@pytest.mark.parametrize("model", [GPT, CLAUDE])
def test_a_stream_that_breaks_after_output_began(
    gov: Services, byok: dict[str, str], model: str
) -> None:
    provider = model.split("/")[0]
    script(gov, provider, reply="one two three four", error_event_after_chunks=2)
    with client(gov, byok["key"]) as c:
        events = list(c.responses.create(model=model, input="Count.", stream=True))
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) == 2
    last = events[-1]
    if provider == "openai":
        # Sluice's error event ends the stream, numbered after the last event relayed.
        assert last.type == "error" and last.code == "upstream_stream_failed"  # type: ignore[union-attr]
    else:
        assert last.type == "response.failed"
        assert last.response.status == "failed"  # type: ignore[union-attr]
        assert last.response.output_text == "one two "  # type: ignore[union-attr]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    (row,) = gov.ledger(byok["org"])
    assert row["status"] == "error" and row["completion_tokens"] >= 2
