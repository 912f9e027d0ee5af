"""Which store a response id belongs to, and what is too large to store."""

from __future__ import annotations

import re

import pytest

from services.edge.errors import APIError
from services.edge.openai import responses_store


def test_sluices_ids_are_recognised_by_their_form() -> None:
    first, second = responses_store.new_response_id(), responses_store.new_response_id()
    assert re.fullmatch(r"resp_sluice_[0-9a-f]{32}", first) and first != second
    assert responses_store.is_ours(first)
    # OpenAI's ids are resp_ and hex: never taken for Sluice's.
    assert not responses_store.is_ours("resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b")


def test_a_conversation_too_large_to_store_is_refused_up_front() -> None:
    small = [{"type": "message", "role": "user", "content": "Hi"}]
    responses_store.check_size(small, small)
    big = [
        {"type": "message", "role": "user", "content": "x" * responses_store.MAX_STORED_INPUT_BYTES}
    ]
    with pytest.raises(APIError) as err:
        responses_store.check_size(big, small)
    assert (err.value.status, err.value.param) == (400, "store")
