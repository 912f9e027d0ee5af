from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.edge.errors import from_validation
from services.edge.openai.protocol import ChatCompletionRequest, CompletionRequest

BASE = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def error_for(body: dict[str, object], schema: type = ChatCompletionRequest) -> tuple[str, str]:
    with pytest.raises(ValidationError) as err:
        schema.model_validate(body)
    api = from_validation(err.value)
    assert api.status == 400
    return api.param or "", api.code or ""


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"n": 2}, "n"),
        ({"presence_penalty": 1.0}, "presence_penalty"),
        ({"stop": [""]}, "stop"),
        ({"logprobs": True}, "logprobs"),
    ],
)
def test_bad_parameters_name_the_parameter(extra: dict[str, object], param: str) -> None:
    assert error_for({**BASE, **extra})[0] == param


def test_missing_field_is_reported_as_missing() -> None:
    assert error_for({"model": "m"}) == ("messages", "missing_required_parameter")


def test_unknown_fields_are_ignored() -> None:
    req = ChatCompletionRequest.model_validate({**BASE, "store": True, "metadata": {"a": 1}})
    assert req.model == "m"


def test_content_parts_flatten_to_text() -> None:
    req = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                }
            ],
        }
    )
    assert req.messages[0].text() == "ab"


def test_image_parts_are_refused() -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
        ],
    }
    assert error_for(body)[0].startswith("messages")


def test_max_completion_tokens_wins() -> None:
    req = ChatCompletionRequest.model_validate(
        {**BASE, "max_tokens": 5, "max_completion_tokens": 9}
    )
    assert req.token_limit() == 9


def test_completions_default_to_sixteen_tokens() -> None:
    req = CompletionRequest.model_validate({"model": "m", "prompt": "x"})
    assert req.token_limit() == 16
    assert error_for({"model": "m", "prompt": ["a", "b"]}, CompletionRequest)[0] == "prompt"
