"""Limits where input meets a parser or a wire, checked at the edge before any service is called.

Each is refused with a 400 in the endpoint's error shape, naming the field:

- JSON nesting deeper than `MAX_JSON_DEPTH` (far deeper than any schema or message a client
  sends; deep enough values would exhaust a parser's recursion downstream);
- strings that cannot be encoded as UTF-8: a lone UTF-16 surrogate (`"\\ud800"`) is valid JSON
  but not Unicode, and no wire (protobuf, HTTP to a provider, the database) can carry it;
- model names longer than `MAX_MODEL_CHARS`: the name travels in gRPC messages and errors, whose
  metadata has a hard size limit;
- NUL bytes and over-long names in the admin API, which PostgreSQL cannot store in text.

Integer ranges are the request models' (pydantic `Field` bounds that fit the proto fields they
travel in) and the query parameters' (`services.edge.usage`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from services.edge.errors import APIError, field_path

MAX_JSON_DEPTH = 128
MAX_MODEL_CHARS = 256
# As auth stores names of organizations, projects, keys and plans.
MAX_NAME_CHARS = 200
# A stop sequence: far longer than any the model could match in its context.
MAX_STOP_CHARS = 1024
# Tools of one request, as OpenAI allows.
MAX_TOOLS = 128
# Path and query parameters: ids, names and filters.
MAX_PARAM_CHARS = 1024

# A JSON escape of a UTF-16 surrogate; only such an escape can put one into a parsed string
# (raw UTF-8 bytes of a surrogate fail to decode first).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def refusal(path: tuple[Any, ...], problem: str) -> APIError:
    """A 400 naming the field at `path` (the whole body when empty)."""
    where = field_path(path)
    subject = f"'{where}'" if where else "The request body"
    return APIError(400, f"{subject} {problem}", param=where or None, code="invalid_value")


def too_deep(path: tuple[Any, ...] = ()) -> APIError:
    """Names the top-level field that holds the deep value (its full path would be as deep)."""
    return refusal(path[:1], f"is nested more than {MAX_JSON_DEPTH} levels deep.")


def _check_text(text: str, path: tuple[Any, ...]) -> None:
    try:
        text.encode()
    except UnicodeEncodeError:
        raise refusal(
            path,
            "holds a lone UTF-16 surrogate escape (such as \\ud800), which is not valid Unicode.",
        ) from None


def _nodes(value: Any) -> Iterator[tuple[Any, tuple[Any, ...], int]]:
    """Every value of a parsed JSON document with its path and depth (the document's is 1); a
    container's values come after it, so a caller that raises on it never walks below."""
    stack: list[tuple[Any, tuple[Any, ...], int]] = [(value, (), 1)]
    while stack:
        node, path, depth = stack.pop()
        yield node, path, depth
        if isinstance(node, dict):
            stack.extend((v, (*path, k), depth + 1) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, (*path, i), depth + 1) for i, v in enumerate(node))


def check_json(value: Any, raw: bytes) -> None:
    """A parsed body's depth and strings; walks it only when its bytes could break a limit."""
    surrogates = _SURROGATE_ESCAPE.search(raw) is not None
    if not surrogates and raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH:
        return
    for node, path, depth in _nodes(value):
        if isinstance(node, dict | list) and depth > MAX_JSON_DEPTH:
            raise too_deep(path)
        if surrogates and isinstance(node, str):
            _check_text(node, path)
        elif surrogates and isinstance(node, dict):
            for key in node:
                _check_text(key, path)


def check_model(model: str, param: str = "model") -> None:
    """A model name that fits the wires it travels on."""
    if len(model) > MAX_MODEL_CHARS:
        raise refusal((param,), f"must be at most {MAX_MODEL_CHARS} characters; got {len(model)}.")
    if "\x00" in model:
        raise refusal((param,), "must not contain NUL bytes.")


def check_params(params: Mapping[str, str]) -> None:
    """Path or query parameters, which reach the databases' queries: no NUL bytes, and no
    longer than a name can be."""
    for name, value in params.items():
        if "\x00" in value:
            raise refusal((name,), "must not contain NUL bytes.")
        if len(value) > MAX_PARAM_CHARS:
            raise refusal((name,), f"must be at most {MAX_PARAM_CHARS} characters.")


def check_names(body: dict[str, Any]) -> None:
    """Strings of an admin body: no NUL anywhere (PostgreSQL cannot store one in text), and
    names without control characters and of at most MAX_NAME_CHARS."""
    for node, path, _ in _nodes(body):
        if isinstance(node, str):
            is_name = bool(path) and path[-1] == "name"
            if "\x00" in node or (is_name and any(c < " " or c == "\x7f" for c in node)):
                what = "control characters" if is_name else "NUL bytes"
                raise refusal(path, f"must not contain {what}.")
            if is_name and len(node) > MAX_NAME_CHARS:
                raise refusal(path, f"must be at most {MAX_NAME_CHARS} characters.")
