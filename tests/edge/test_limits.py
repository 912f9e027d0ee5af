"""The edge's input limits (services.edge.limits) and the gRPC errors it does not pass on."""

from __future__ import annotations

import json

import grpc
import pytest

from services.common.grpc_server import ERROR_CODE_KEY
from services.edge.body import json_object
from services.edge.errors import APIError, from_grpc
from services.edge.limits import MAX_JSON_DEPTH, check_names, check_params
from tests.edge.test_control import rpc_error


def nested(depth: int) -> object:
    """`depth` arrays, one in the other."""
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


def refusal(raw: bytes) -> APIError:
    with pytest.raises(APIError) as err:
        json_object(raw)
    assert err.value.status == 400
    return err.value


def test_depth_up_to_the_limit_is_taken_and_past_it_refused_naming_the_top_field() -> None:
    # The body is the first level.
    ok = {"metadata": nested(MAX_JSON_DEPTH - 1)}
    assert json_object(json.dumps(ok).encode()) == ok
    err = refusal(json.dumps({"model": "m", "metadata": nested(MAX_JSON_DEPTH)}).encode())
    assert err.param == "metadata"
    assert "nested" in err.message


def test_depth_past_the_parsers_recursion_is_refused() -> None:
    err = refusal(b"[" * 200_000 + b"]" * 200_000)
    assert err.param is None
    assert "nested" in err.message


def test_a_lone_surrogate_is_refused_naming_its_field_and_a_pair_is_taken() -> None:
    assert json_object(b'{"a": "\\ud83d\\ude00"}') == {"a": "\U0001f600"}
    err = refusal(b'{"messages": [{"content": "ok"}, {"content": "x\\udc00"}]}')
    assert err.param == "messages[1].content"
    err = refusal(b'{"tools": {"\\ud800": 1}}')
    assert err.param == "tools"


@pytest.mark.parametrize(
    "raw", [b'{"a": NaN}', b'{"a": -Infinity}', b'{"a": ' + b"9" * 5000 + b"}", b"\xff\xfe"]
)
def test_what_pythons_parser_would_take_or_choke_on_is_a_400(raw: bytes) -> None:
    assert refusal(raw).code == "invalid_json"


def test_admin_strings_refuse_nul_anywhere_and_control_characters_in_names() -> None:
    check_names({"name": "ok name", "description": "two\nlines"})
    for body, param in [
        ({"name": "a\x00"}, "name"),
        ({"quota": {"note": "\x00"}}, "quota.note"),
        ({"name": "tab\there"}, "name"),
        ({"rules": [{"name": "x" * 201}]}, "rules[0].name"),
    ]:
        with pytest.raises(APIError) as err:
            check_names(body)
        assert err.value.param == param


def test_parameters_refuse_nul() -> None:
    check_params({"org": "acme"})
    with pytest.raises(APIError) as err:
        check_params({"org": "a\x00"})
    assert err.value.param == "org"


def test_a_status_that_grpc_chose_is_a_500_without_its_text() -> None:
    """A reply over gRPC's metadata limit arrives as RESOURCE_EXHAUSTED from gRPC itself."""
    exc = rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED)
    err = from_grpc(exc, "engine")
    assert err.status == 500
    assert err.message == "The engine service had an internal error."


def test_a_status_that_a_service_chose_keeps_its_meaning() -> None:
    limited = from_grpc(rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, **{ERROR_CODE_KEY: ""}), "m")
    assert limited.status == 429
    unavailable = from_grpc(rpc_error(grpc.StatusCode.UNAVAILABLE), "metering")
    assert unavailable.status == 503
