"""Hostile input at the edge: each request gets a 4xx in its API's error shape naming the field,
before any service is called; no message carries another service's internal text; and the
keep-alive connection it came on serves the next request."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import openai
import pytest

from services.edge.limits import MAX_JSON_DEPTH, MAX_MODEL_CHARS
from tests.e2e.conftest import Stack
from tests.e2e.test_chat import MODEL

DEEP = "[" * 100_000 + "]" * 100_000
JUST_TOO_DEEP = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


@dataclass(frozen=True)
class Case:
    method: str
    path: str
    body: bytes | None
    status: int
    param: str | None
    admin: bool = False


def chat_with(**fields: object) -> bytes:
    return json.dumps({**CHAT, **fields}).encode()


def raw_chat(fragment: str) -> bytes:
    """A valid chat body with `fragment` spliced in as the value of `metadata`."""
    head = json.dumps(CHAT)[:-1]
    return f'{head}, "metadata": {fragment}}}'.encode()


SURROGATE_CONTENT = b'{"model": "%s", "messages": [{"role": "user", "content": "\\ud800"}]}' % (
    MODEL.encode()
)

CASES = {
    "body nested 100,000 deep": Case("POST", "/v1/chat/completions", DEEP.encode(), 400, None),
    "value nested 100,000 deep in a chat body": Case(
        "POST", "/v1/chat/completions", raw_chat(DEEP), 400, None
    ),
    "value nested past the limit in a chat body": Case(
        "POST", "/v1/chat/completions", raw_chat(JUST_TOO_DEEP), 400, "metadata"
    ),
    "value nested past the limit in an upstream chat body": Case(
        "POST",
        "/v1/chat/completions",
        raw_chat(JUST_TOO_DEEP).replace(MODEL.encode(), b"openai/gpt-4o-mini"),
        400,
        "metadata",
    ),
    "deep body on the Messages API": Case("POST", "/v1/messages", DEEP.encode(), 400, None),
    "deep body on the admin API": Case(
        "POST", "/admin/v1/organizations", DEEP.encode(), 400, None, admin=True
    ),
    "max_tokens 2147483648": Case(
        "POST", "/v1/chat/completions", chat_with(max_tokens=2147483648), 400, "max_tokens"
    ),
    "max_tokens 10000000000": Case(
        "POST", "/v1/chat/completions", chat_with(max_tokens=10000000000), 400, "max_tokens"
    ),
    "max_tokens 2147483648 upstream": Case(
        "POST",
        "/v1/chat/completions",
        chat_with(model="openai/gpt-4o-mini", max_tokens=2147483648),
        400,
        "max_tokens",
    ),
    "top_k 99999999999": Case(
        "POST", "/v1/chat/completions", chat_with(top_k=99999999999), 400, "top_k"
    ),
    "usage limit 99999999999999999999": Case(
        "GET", "/v1/usage?limit=99999999999999999999", None, 400, "limit"
    ),
    "usage start_time past int64 milliseconds": Case(
        "GET", "/v1/usage?start_time=99999999999999999999", None, 400, "start_time"
    ),
    "admin usage limit 99999999999999999999": Case(
        "GET", "/admin/v1/usage?limit=99999999999999999999", None, 400, "limit", admin=True
    ),
    "lone surrogate in a message": Case(
        "POST", "/v1/chat/completions", SURROGATE_CONTENT, 400, "messages[0].content"
    ),
    "lone surrogate in an upstream message": Case(
        "POST",
        "/v1/chat/completions",
        SURROGATE_CONTENT.replace(MODEL.encode(), b"openai/gpt-4o-mini"),
        400,
        "messages[0].content",
    ),
    "lone surrogate in a Responses input": Case(
        "POST",
        "/v1/responses",
        b'{"model": "%s", "input": "\\udfff"}' % MODEL.encode(),
        400,
        "input",
    ),
    "lone surrogate in an embeddings input": Case(
        "POST",
        "/v1/embeddings",
        b'{"model": "openai/text-embedding-3-small", "input": ["ok", "\\ud800"]}',
        400,
        "input[1]",
    ),
    "lone surrogate in an organization name": Case(
        "POST", "/admin/v1/organizations", b'{"name": "\\ud800"}', 400, "name", admin=True
    ),
    "model name of 100,000 characters": Case(
        "POST", "/v1/chat/completions", chat_with(model="m" * 100_000), 400, "model"
    ),
    "upstream model name of 100,000 characters": Case(
        "POST", "/v1/chat/completions", chat_with(model="openai/" + "m" * 100_000), 400, "model"
    ),
    "NUL in an organization name": Case(
        "POST", "/admin/v1/organizations", b'{"name": "a\\u0000b"}', 400, "name", admin=True
    ),
    "a number as an organization name": Case(
        "POST", "/admin/v1/organizations", b'{"name": 5}', 400, "name", admin=True
    ),
    "NUL in a key name": Case(
        "POST",
        "/admin/v1/keys",
        b'{"org": "dev", "name": "k\\u0000"}',
        400,
        "name",
        admin=True,
    ),
    "NUL in a plan name": Case(
        "PUT", "/admin/v1/plans/a%00b", b'{"monthly_tokens": 5}', 400, "plan", admin=True
    ),
    "NUL in a usage filter": Case("GET", "/v1/usage?model=a%00b", None, 400, "model"),
    "NaN is not JSON": Case(
        "POST", "/v1/chat/completions", chat_with()[:-1] + b', "temperature": NaN}', 400, None
    ),
    "a stop sequence of 100,000 characters": Case(
        "POST", "/v1/chat/completions", chat_with(stop=["x" * 100_000]), 400, "stop"
    ),
}


def admin_token(stack: Stack) -> str:
    return (Path(stack.env["SLUICE_DATA_DIR"]) / "admin_token").read_text().strip()


@pytest.fixture
def connection(stack: Stack) -> Iterator[http.client.HTTPConnection]:
    url = urlsplit(stack.base_url)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=60)
    conn.connect()
    try:
        yield conn
    finally:
        conn.close()


def exchange(
    conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None, token: str
) -> tuple[int, dict[str, str], bytes]:
    headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    return resp.status, dict(resp.getheaders()), resp.read()


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_request_is_a_4xx_naming_its_field_and_keeps_the_connection(
    stack: Stack, connection: http.client.HTTPConnection, name: str
) -> None:
    case = CASES[name]
    token = admin_token(stack) if case.admin else stack.dev_key
    sock = connection.sock
    status, headers, body = exchange(connection, case.method, case.path, case.body, token)
    assert status == case.status, body[:500]
    answer = json.loads(body)
    if case.path.startswith("/v1/messages"):
        assert answer["type"] == "error"
        error = answer["error"]
        assert error["type"] == "invalid_request_error"
    else:
        error = answer["error"]
        assert error["param"] == case.param, error
        assert error["type"] == "invalid_request_error"
    assert case.param is None or case.param in error["message"]
    for internal in ("grpc", "metadata size", "Traceback", "sqlalchemy", "asyncpg"):
        assert internal.lower() not in error["message"].lower()
    assert headers.get("connection", "").lower() != "close"
    # The next request rides the same connection and succeeds.
    status, _, body = exchange(connection, "GET", "/v1/models", None, stack.dev_key)
    assert status == 200, body[:500]
    assert connection.sock is sock


def test_the_edge_refuses_oversized_headers_in_its_error_shape(stack: Stack) -> None:
    url = urlsplit(stack.base_url)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=60)
    try:
        conn.request(
            "GET",
            "/v1/models",
            headers={"authorization": f"Bearer {stack.dev_key}", "x-padding": "a" * 100_000},
        )
        resp = conn.getresponse()
        assert resp.status == 431
        assert json.loads(resp.read())["error"]["code"] == "request_header_fields_too_large"
    finally:
        conn.close()


def test_a_long_model_name_is_refused_before_it_reaches_a_service(stack: Stack) -> None:
    """The limit sits where the name would overflow gRPC's metadata in an error, not lower."""
    client = stack.client()
    ok = "m" * MAX_MODEL_CHARS
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model=ok, messages=[{"role": "user", "content": "x"}])
    assert err.value.code == "model_not_found"
