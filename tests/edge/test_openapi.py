"""The OpenAPI document: in step with the route table both ways, a valid OpenAPI 3.1 document,
request schemas taken from the models that validate requests, and served at /openapi.json."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from starlette.routing import Match, Route
from starlette.testclient import TestClient

from services.common.settings import Settings
from services.edge import openapi, openapi_schemas
from services.edge.app import create_app
from services.edge.openai.protocol import ChatCompletionRequest, CompletionRequest
from services.edge.routes import ROUTES
from services.pb.auth.v1 import auth_pb2
from services.pb.metering.v1 import metering_pb2

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
DOC = openapi.document()
SCHEMAS = DOC["components"]["schemas"]


def template(path: str) -> str:
    """A Starlette path as OpenAPI writes it: `{model:path}` -> `{model}`."""
    return re.sub(r"\{(\w+):\w+\}", r"{\1}", path)


def undocumented(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in openapi.UNDOCUMENTED)


def served() -> set[tuple[str, str]]:
    """(path, method) of every route the app serves, less the console's; HEAD goes with GET
    (Starlette adds it) and is not listed."""
    out = set()
    for route in ROUTES:
        if undocumented(route.path):
            continue
        assert isinstance(route, Route), f"{route.path}: only plain routes are documented"
        assert route.methods, f"{route.path} takes every method"
        out |= {(template(route.path), m.lower()) for m in route.methods if m != "HEAD"}
    return out


def documented() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in DOC["paths"].items():
        for method, op in item.items():
            if method in METHODS:
                yield path, method, op


def test_every_route_is_documented() -> None:
    missing = served() - {(p, m) for p, m, _ in documented()}
    assert not missing, f"routes missing from the OpenAPI document: {sorted(missing)}"


def test_every_documented_operation_is_served() -> None:
    extra = {(p, m) for p, m, _ in documented()} - served()
    assert not extra, f"operations the app does not serve: {sorted(extra)}"
    # And the app's router takes each documented path, its parameters filled in.
    for path, method, _ in documented():
        concrete = re.sub(r"\{\w+\}", "x", path)
        scope = {"type": "http", "path": concrete, "method": method.upper()}
        assert any(r.matches(scope)[0] == Match.FULL for r in ROUTES), (method, path)


def test_only_the_console_is_left_out() -> None:
    assert set(openapi.UNDOCUMENTED) == {"/console"}
    left_out = {r.path for r in ROUTES if undocumented(r.path)}
    assert left_out and all(p.startswith("/console") for p in left_out)
    assert not any(undocumented(p) for p in DOC["paths"])


def test_it_is_a_valid_openapi_3_1_document() -> None:
    assert DOC["openapi"].startswith("3.1.")
    validate(DOC)


def test_path_parameters_match_the_templates() -> None:
    for path, _, op in documented():
        names = {p["name"] for p in op.get("parameters", ()) if p["in"] == "path"}
        assert names == set(re.findall(r"\{(\w+)\}", path)), path


@pytest.mark.parametrize("model", [ChatCompletionRequest, CompletionRequest])
def test_request_schemas_are_the_validating_models_own(model: type[Any]) -> None:
    own = model.model_json_schema(ref_template=openapi_schemas.REF)
    defs = own.pop("$defs", {})
    assert SCHEMAS[model.__name__] == own
    for name, schema in defs.items():
        assert SCHEMAS[name] == schema


def test_bodies_point_at_their_schemas() -> None:
    def body(path: str, method: str = "post") -> Any:
        return DOC["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]

    assert body("/v1/completions") == {"$ref": "#/components/schemas/CompletionRequest"}
    assert {"$ref": "#/components/schemas/ChatCompletionRequest"} in body("/v1/chat/completions")[
        "anyOf"
    ]
    assert body("/admin/v1/keys") == {"$ref": "#/components/schemas/auth.v1.CreateKeyRequest"}


@pytest.mark.parametrize(
    "message", [auth_pb2.CreateKeyRequest, auth_pb2.AddProviderRequest, metering_pb2.Quota]
)
def test_admin_schemas_have_the_proto_fields(message: Any) -> None:
    desc = message.DESCRIPTOR
    schema = SCHEMAS[openapi_schemas.proto_name(desc)]
    assert set(schema["properties"]) == {f.name for f in desc.fields}
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize("path", sorted(openapi.EXAMPLES))
def test_request_examples_fit_their_schemas(path: str) -> None:
    media = DOC["paths"][path]["post"]["requestBody"]["content"]["application/json"]
    example = media["example"]
    # The schema with the document's components beside it, where its $refs point.
    schema = {**media["schema"], "components": DOC["components"]}
    Draft202012Validator(schema).validate(example)
    if path == "/v1/chat/completions":
        ChatCompletionRequest.model_validate(example)
    if path == "/v1/completions":
        CompletionRequest.model_validate(example)


def test_security_and_error_shapes_follow_the_prefix() -> None:
    for path, method, op in documented():
        schemes = {name for req in op.get("security", ()) for name in req}
        errors = {
            code: answer["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
            for code, answer in op["responses"].items()
            if code in ("4XX", "5XX")
        }
        if path.startswith("/admin/v1/"):
            assert schemes == {"OperatorToken"}, (method, path)
        elif path.startswith("/v1/"):
            assert "ApiKey" in schemes and "OperatorToken" not in schemes, (method, path)
        else:
            assert not schemes, (method, path)
        if path.startswith("/v1/") or path.startswith("/admin/v1/"):
            shape = "AnthropicError" if path.startswith("/v1/messages") else "Error"
            assert errors == {"4XX": shape, "5XX": shape}, (method, path)


def test_it_is_served_and_built_once() -> None:
    # Without the lifespan: the document needs no backend.
    client = TestClient(create_app(Settings()))
    r = client.get("/openapi.json")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json() == DOC
    assert openapi.document() is DOC
