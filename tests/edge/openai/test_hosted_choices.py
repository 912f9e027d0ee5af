"""Engine messages as OpenAI choices: whole and streamed, several choices, tool calls, logprobs."""

from __future__ import annotations

from typing import Any

from services.edge.openai.hosted_choices import ChunkChoices, Collected
from services.pb.engine.v1 import engine_pb2 as pb


def lp(token: str, logprob: float, *tops: tuple[str, float]) -> pb.TokenLogprob:
    return pb.TokenLogprob(
        token=token,
        token_bytes=token.encode(),
        logprob=logprob,
        top_logprobs=[pb.TopLogprob(token=t, token_bytes=t.encode(), logprob=v) for t, v in tops],
    )


def msg(index: int = 0, text: str = "", finish: str = "", **fields: Any) -> pb.GenerateResponse:
    return pb.GenerateResponse(index=index, text=text, finish_reason=finish, **fields)


CALL_START = pb.ToolCallDelta(index=0, id="call_1", name="get_weather")
CALL_REST = [
    pb.ToolCallDelta(index=0, arguments='{"city": '),
    pb.ToolCallDelta(index=0, arguments='"Paris"}'),
]
SECOND = pb.ToolCallDelta(index=1, id="call_2", name="get_time", arguments="{}")
STREAM = [
    msg(0, "Hel", logprobs=[lp("Hel", -0.1, ("Hel", -0.1), ("Hi", -2.0))]),
    msg(1, "", tool_calls=[CALL_START]),
    msg(0, "lo", logprobs=[lp("lo", -0.2, ("lo", -0.2), ("p", -3.0))], finish="stop"),
    msg(1, "", tool_calls=CALL_REST),
    msg(1, "", tool_calls=[SECOND], finish="tool_calls",
        usage=pb.Usage(prompt_tokens=5, completion_tokens=9)),
]  # fmt: skip


def test_whole_answers_assemble_every_choice() -> None:
    collected = Collected(chat=True, logprobs=True)
    for m in STREAM:
        collected.add(m)
    first, second = collected.payload()
    assert first == {
        "index": 0,
        "message": {"role": "assistant", "content": "Hello", "refusal": None},
        "logprobs": {
            "content": [
                {
                    "token": "Hel",
                    "logprob": -0.1,
                    "bytes": [72, 101, 108],
                    "top_logprobs": [
                        {"token": "Hel", "logprob": -0.1, "bytes": [72, 101, 108]},
                        {"token": "Hi", "logprob": -2.0, "bytes": [72, 105]},
                    ],
                },
                {
                    "token": "lo",
                    "logprob": -0.2,
                    "bytes": [108, 111],
                    "top_logprobs": [
                        {"token": "lo", "logprob": -0.2, "bytes": [108, 111]},
                        {"token": "p", "logprob": -3.0, "bytes": [112]},
                    ],
                },
            ],
            "refusal": None,
        },
        "finish_reason": "stop",
    }
    assert second["message"] == {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            },
            {
                "id": "call_2",
                "type": "function",
                "function": {"name": "get_time", "arguments": "{}"},
            },
        ],
    }
    assert second["finish_reason"] == "tool_calls"


def test_a_named_tool_choice_finishes_with_stop_as_openai_does() -> None:
    collected = Collected(chat=True, logprobs=False, named_function=True)
    collected.add(msg(0, "", tool_calls=[CALL_START, *CALL_REST], finish="tool_calls"))
    (choice,) = collected.payload()
    assert choice["finish_reason"] == "stop" and choice["logprobs"] is None


def test_streams_give_each_choice_its_role_deltas_and_finish() -> None:
    chunks = ChunkChoices(chat=True, logprobs=True)
    out = [payload for m in STREAM for payload in chunks.of(m)]
    deltas = [(p[0]["index"], p[0]["delta"], p[0]["finish_reason"]) for p in out]
    assert deltas == [
        (0, {"role": "assistant", "content": "Hel"}, None),
        (1, {"role": "assistant", "tool_calls": [
            {"index": 0, "id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": ""}}]}, None),
        (0, {"content": "lo"}, None),
        (0, {}, "stop"),
        (1, {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}},
                            {"index": 0, "function": {"arguments": '"Paris"}'}}]}, None),
        (1, {"tool_calls": [{"index": 1, "id": "call_2", "type": "function",
                             "function": {"name": "get_time", "arguments": "{}"}}]}, None),
        (1, {}, "tool_calls"),
    ]  # fmt: skip
    assert out[0][0]["logprobs"]["content"][0]["token"] == "Hel"
    assert out[1][0]["logprobs"] is None


def test_a_first_message_without_text_still_opens_the_choice() -> None:
    chunks = ChunkChoices(chat=True, logprobs=False)
    assert chunks.of(msg(0, "")) == [
        [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
          "finish_reason": None}]
    ]  # fmt: skip
    assert chunks.of(msg(0, "")) == []


def test_legacy_completions_logprobs_and_offsets() -> None:
    collected = Collected(chat=False, logprobs=True, prompt_length=10)
    collected.add(msg(0, "Hel", logprobs=[lp("Hel", -0.1, ("Hel", -0.1))]))
    collected.add(msg(0, "lo", logprobs=[lp("lo", -0.2)], finish="length"))
    (choice,) = collected.payload()
    assert choice == {
        "index": 0,
        "text": "Hello",
        "logprobs": {
            "tokens": ["Hel", "lo"],
            "token_logprobs": [-0.1, -0.2],
            "top_logprobs": [{"Hel": -0.1}, {}],
            "text_offset": [10, 13],
        },
        "finish_reason": "length",
    }
    chunks = ChunkChoices(chat=False, logprobs=True, prompt_length=10)
    first = chunks.of(msg(0, "Hel", logprobs=[lp("Hel", -0.1)]))
    second = chunks.of(msg(0, "lo", logprobs=[lp("lo", -0.2)], finish="stop"))
    assert first[0][0]["logprobs"]["text_offset"] == [10]
    assert second[0][0]["logprobs"]["text_offset"] == [13]
    assert second[1][0] == {"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}
