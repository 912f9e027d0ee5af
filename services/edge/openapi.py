"""The OpenAPI 3.1 description of the edge's HTTP surface, served at `GET /openapi.json`.

Request bodies that a pydantic model validates (`services.edge.openai.protocol`) are described
by that model's own JSON schema, and admin bodies, which are proto messages in JSON, by their
messages' descriptors, so neither is written twice. Routes that check a few fields and pass the
rest of a body to a provider get a compact schema of what the edge itself checks, open to the
rest (those schemas, and the answers', are in `services.edge.openapi_schemas`). Errors are one
`Error` component in OpenAI's shape (Anthropic's on `/v1/messages*`), documented as the `4XX`
and `5XX` ranges of every operation. The console (`UNDOCUMENTED`) is left out. The document is
built once per process.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import Response

from services.edge.openai.protocol import ChatCompletionRequest, CompletionRequest
from services.edge.openapi_schemas import (
    ANSWERS,
    COUNT_TOKENS,
    EMBEDDINGS,
    JSON,
    MESSAGES,
    ORG_CREATE,
    POLICY_UPDATE,
    PROJECT_CREATE,
    REF,
    RESPONSES,
    SSE,
    SSE_EVENT,
    UPSTREAM_CHAT,
    list_of,
    proto_ref,
    proto_schema,
    ref,
    with_policy,
)
from services.edge.usage import GROUPS, MAX_LIMIT, MAX_TIME_S
from services.pb.auth.v1 import auth_pb2
from services.pb.metering.v1 import metering_pb2

# Path prefixes the document leaves out, and why.
UNDOCUMENTED = {
    "/console": "the operator console: HTML pages and static files for a browser, no API; what "
    "they show they fetch from /v1 and /admin/v1, which are documented here",
}

# Security requirements: the API key on /v1 (the Anthropic SDK's x-api-key header too on its
# routes), the operator token on /admin/v1.
Security = list[dict[str, list[str]]]
API_KEY: Security = [{"ApiKey": []}]
ANTHROPIC_KEY: Security = [{"ApiKey": []}, {"AnthropicApiKey": []}]
OPERATOR: Security = [{"OperatorToken": []}]

# Operations ----------------------------------------------------------------------------------


def body(schema: dict[str, Any], example: dict[str, Any] | None = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {"required": True, "content": {JSON: media}}


# Request examples, on the bundled model where it serves the endpoint (they are the fuzzer's
# first cases too, and the values its mutations start from).
BUNDLED = "smollm2-135m-instruct"
_HI = [{"role": "user", "content": "Say hello."}]
EXAMPLES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"model": BUNDLED, "messages": _HI, "max_tokens": 8},
    "/v1/completions": {"model": BUNDLED, "prompt": "Once upon a time", "max_tokens": 8},
    "/v1/embeddings": {"model": "openai/text-embedding-3-small", "input": "hello"},
    "/v1/responses": {"model": BUNDLED, "input": "Say hello.", "max_output_tokens": 8},
    "/v1/messages": {"model": "anthropic/claude-sonnet-4-0", "max_tokens": 8, "messages": _HI},
    "/v1/messages/count_tokens": {"model": "anthropic/claude-sonnet-4-0", "messages": _HI},
}


def answer(description: str, **content: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {k: {"schema": v} for k, v in content.items()}}


def json_answer(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return answer(description, **{JSON: schema})


def streamed(schema: dict[str, Any]) -> dict[str, Any]:
    """JSON, or server-sent events when the body asks for `stream`."""
    return answer(
        "The answer, or its server-sent events when the request streams",
        **{JSON: schema, SSE: SSE_EVENT},
    )


def errors(anthropic: bool = False) -> dict[str, Any]:
    error = ref("AnthropicError" if anthropic else "Error")
    return {
        "4XX": json_answer(error, "Refused: invalid input, key, limits or an unknown object"),
        "5XX": json_answer(error, "A service or the upstream provider failed"),
    }


def operation(
    summary: str,
    ok: dict[str, Any],
    *,
    security: Security | None = API_KEY,
    request: dict[str, Any] | None = None,
    params: list[dict[str, Any]] | None = None,
    status: str = "200",
    anthropic: bool = False,
    failures: bool = True,
    example: dict[str, Any] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {status: ok}}
    if failures:
        op["responses"].update(errors(anthropic))
    if security is not None:
        op["security"] = security
    if request is not None:
        op["requestBody"] = body(request, example)
    if params:
        op["parameters"] = list(params)
    return op


def path_param(name: str, description: str = "") -> dict[str, Any]:
    p = {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
    return {**p, "description": description} if description else p


def query(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    q = {"name": name, "in": "query", "required": False, "schema": schema}
    return {**q, "description": description} if description else q


_SECONDS = {"type": "integer", "minimum": 0, "maximum": MAX_TIME_S}
USAGE_FILTERS = [
    query("project_id", {"type": "string"}),
    query("key_id", {"type": "string"}),
    query("model", {"type": "string"}),
    query("start_time", _SECONDS, "unix seconds"),
    query("end_time", _SECONDS, "unix seconds"),
    query("format", {"enum": ["json", "csv"]}),
]
RECORDS_QUERY = [
    *USAGE_FILTERS,
    query(
        "limit", {"type": "integer", "minimum": 0, "maximum": MAX_LIMIT}, "0 = the default (100)"
    ),
]
TOTALS_QUERY = [*USAGE_FILTERS, query("group_by", {"enum": list(GROUPS)})]
ORG_QUERY = query("org", {"type": "string"}, "organization name or id")
CSV = {"type": "string"}


def _usage(c: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The answers of a usage records query and of a totals query, JSON or CSV."""
    records = list_of(proto_ref(metering_pb2.UsageRecord.DESCRIPTOR, c))
    totals = list_of(proto_ref(metering_pb2.UsageTotal.DESCRIPTOR, c), group_by={"type": "string"})
    return (
        answer("Usage records, newest first", **{JSON: records, "text/csv": CSV}),
        answer("Usage totals", **{JSON: totals, "text/csv": CSV}),
    )


def v1_paths(c: dict[str, Any]) -> dict[str, Any]:
    records_ok, totals_ok = _usage(c)
    chat = {"anyOf": [ref("ChatCompletionRequest"), ref("UpstreamChatCompletionRequest")]}
    response_id = path_param("response_id", "resp_...")
    return {
        "/v1/chat/completions": {
            "post": operation(
                "Chat completion: hosted models, or openai/... and anthropic/... with the "
                "organization's provider key",
                streamed(ref("ChatCompletion")),
                request=chat,
                example=EXAMPLES["/v1/chat/completions"],
            )
        },
        "/v1/completions": {
            "post": operation(
                "Legacy text completion, hosted models",
                streamed(ref("Completion")),
                request=ref("CompletionRequest"),
                example=EXAMPLES["/v1/completions"],
            )
        },
        "/v1/embeddings": {
            "post": operation(
                "Embeddings of openai/<model>",
                json_answer(ref("EmbeddingList")),
                request=ref("EmbeddingRequest"),
                example=EXAMPLES["/v1/embeddings"],
            )
        },
        "/v1/responses": {
            "post": operation(
                "Create a response (OpenAI's Responses API)",
                streamed(ref("Response")),
                request=ref("ResponseCreateRequest"),
                example=EXAMPLES["/v1/responses"],
            )
        },
        "/v1/responses/{response_id}": {
            "get": operation(
                "A stored response", json_answer(ref("Response")), params=[response_id]
            ),
            "delete": operation(
                "Delete a stored response",
                json_answer(ref("ResponseDeleted")),
                params=[response_id],
            ),
        },
        "/v1/messages": {
            "post": operation(
                "Anthropic's Messages API for anthropic/<model>",
                streamed(ref("Message")),
                security=ANTHROPIC_KEY,
                request=ref("MessagesRequest"),
                example=EXAMPLES["/v1/messages"],
                anthropic=True,
            )
        },
        "/v1/messages/count_tokens": {
            "post": operation(
                "Anthropic's token count of a Messages body",
                json_answer(ref("TokenCount")),
                security=ANTHROPIC_KEY,
                request=ref("CountTokensRequest"),
                example=EXAMPLES["/v1/messages/count_tokens"],
                anthropic=True,
            )
        },
        "/v1/models": {
            "get": operation("Models this key may use", json_answer(list_of(ref("Model"))))
        },
        "/v1/models/{model}": {
            "get": operation(
                "One model",
                json_answer(ref("Model")),
                params=[path_param("model", "a hosted model, or provider/model (may hold '/')")],
            )
        },
        "/v1/usage": {
            "get": operation(
                "The key's organization's usage records", records_ok, params=RECORDS_QUERY
            )
        },
        "/v1/usage/totals": {
            "get": operation(
                "The key's organization's usage totals", totals_ok, params=TOTALS_QUERY
            )
        },
        "/v1/usage/budgets": {
            "get": operation(
                "Budgets that apply to the key, with what is used and reserved",
                json_answer(list_of(proto_ref(metering_pb2.BudgetState.DESCRIPTOR, c))),
            )
        },
    }


def admin_paths(c: dict[str, Any]) -> dict[str, Any]:
    c["Organization"] = with_policy(auth_pb2.Org.DESCRIPTOR, c)
    c["Project"] = with_policy(auth_pb2.Project.DESCRIPTOR, c)
    policy = proto_ref(metering_pb2.Policy.DESCRIPTOR, c)
    plan = proto_ref(metering_pb2.Plan.DESCRIPTOR, c)
    key_info = proto_ref(auth_pb2.KeyInfo.DESCRIPTOR, c)
    new_key = proto_ref(auth_pb2.CreateKeyResponse.DESCRIPTOR, c)
    provider = proto_ref(auth_pb2.ProviderInfo.DESCRIPTOR, c)
    records_ok, totals_ok = _usage(c)
    org = path_param("org", "organization name or id")

    def admin(summary: str, ok: dict[str, Any], **kw: Any) -> dict[str, Any]:
        return operation(summary, ok, security=OPERATOR, **kw)

    return {
        "/admin/v1/organizations": {
            "post": admin(
                "Create an organization (optionally on a plan)",
                json_answer(ref("Organization"), "Created"),
                request=ORG_CREATE,
                status="201",
            ),
            "get": admin("Organizations", json_answer(list_of(ref("Organization")))),
        },
        "/admin/v1/organizations/{org}": {
            "get": admin("One organization", json_answer(ref("Organization")), params=[org]),
            "patch": admin(
                "Change an organization's plan or limits",
                json_answer(ref("Organization")),
                request=POLICY_UPDATE,
                params=[org],
            ),
        },
        "/admin/v1/projects": {
            "post": admin(
                "Create a project (optionally with limits)",
                json_answer(ref("Project"), "Created"),
                request=PROJECT_CREATE,
                status="201",
            ),
            "get": admin("Projects", json_answer(list_of(ref("Project"))), params=[ORG_QUERY]),
        },
        "/admin/v1/projects/{project}": {
            "patch": admin(
                "Change a project's limits",
                json_answer(policy),
                request=POLICY_UPDATE,
                params=[path_param("project", "project id")],
            )
        },
        "/admin/v1/keys": {
            "post": admin(
                "Create an API key; the secret is shown once",
                json_answer(new_key, "Created"),
                request=proto_ref(auth_pb2.CreateKeyRequest.DESCRIPTOR, c),
                status="201",
            ),
            "get": admin(
                "API keys (never their secrets)",
                json_answer(list_of(key_info)),
                params=[ORG_QUERY, query("project", {"type": "string"})],
            ),
        },
        "/admin/v1/keys/{key}/revoke": {
            "post": admin(
                "Revoke a key", json_answer(key_info), params=[path_param("key", "key id")]
            )
        },
        "/admin/v1/keys/{key}/rotate": {
            "post": admin(
                "A new secret for a key; the old one works for grace_seconds more",
                json_answer(new_key),
                request=proto_schema(auth_pb2.RotateKeyRequest.DESCRIPTOR, c, omit=("key_id",)),
                params=[path_param("key", "key id")],
            )
        },
        "/admin/v1/plans": {"get": admin("Plans", json_answer(list_of(plan)))},
        "/admin/v1/plans/{plan}": {
            "put": admin(
                "Create or replace a plan",
                json_answer(plan),
                request=proto_schema(metering_pb2.Plan.DESCRIPTOR, c, omit=("name",)),
                params=[path_param("plan", "plan name")],
            )
        },
        "/admin/v1/usage": {
            "get": admin("Usage records", records_ok, params=[*RECORDS_QUERY, ORG_QUERY])
        },
        "/admin/v1/usage/totals": {
            "get": admin("Usage totals", totals_ok, params=[*TOTALS_QUERY, ORG_QUERY])
        },
        "/admin/v1/providers": {
            "post": admin(
                "Store a provider key, encrypted; only its fingerprint is shown",
                json_answer(provider, "Created"),
                request=proto_ref(auth_pb2.AddProviderRequest.DESCRIPTOR, c),
                status="201",
            ),
            "get": admin("Provider keys", json_answer(list_of(provider)), params=[ORG_QUERY]),
        },
        "/admin/v1/providers/{provider}": {
            "delete": admin(
                "Remove a provider key",
                json_answer(provider),
                params=[path_param("provider", "provider credential id")],
            )
        },
    }


def service_paths() -> dict[str, Any]:
    ready = ref("Readiness")
    return {
        "/healthz": {
            "get": operation("Liveness", json_answer(ref("Health")), security=None, failures=False)
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: auth, metering and an engine serving, not draining",
                "responses": {
                    "200": json_answer(ready, "Ready"),
                    "503": json_answer(ready, "Not ready, or draining"),
                },
            }
        },
        "/metrics": {
            "get": operation(
                "Prometheus metrics",
                answer("Prometheus text format", **{"text/plain": {"type": "string"}}),
                security=None,
                failures=False,
            )
        },
        "/openapi.json": {
            "get": operation(
                "This document",
                json_answer({"type": "object"}),
                security=None,
                failures=False,
            )
        },
    }


@functools.cache
def document() -> dict[str, Any]:
    """The OpenAPI document (built once; callers must not change it)."""
    _, defs = models_json_schema(
        [(ChatCompletionRequest, "validation"), (CompletionRequest, "validation")],
        ref_template=REF,
    )
    components: dict[str, Any] = {**defs["$defs"], **ANSWERS}
    components.update(
        UpstreamChatCompletionRequest=UPSTREAM_CHAT,
        EmbeddingRequest=EMBEDDINGS,
        ResponseCreateRequest=RESPONSES,
        MessagesRequest=MESSAGES,
        CountTokensRequest=COUNT_TOKENS,
    )
    proto_ref(metering_pb2.Quota.DESCRIPTOR, components)
    paths = {**v1_paths(components), **admin_paths(components), **service_paths()}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Sluice",
            "version": "v1",
            "description": "OpenAI-compatible inference: hosted models and the organization's "
            "own OpenAI and Anthropic accounts, under one governance. Not documented here: "
            + "; ".join(f"{prefix} ({why})" for prefix, why in UNDOCUMENTED.items()),
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "ApiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key, sk-sluice-...",
                },
                "AnthropicApiKey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "x-api-key",
                    "description": "The same API key, as the Anthropic SDK sends it",
                },
                "OperatorToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The operator token (SLUICE_ADMIN_TOKEN, or the admin_token "
                    "file in the data directory); not an API key",
                },
            },
        },
    }


@functools.cache
def _rendered() -> bytes:
    return json.dumps(document(), separators=(",", ":")).encode()


async def openapi_json(request: Request) -> Response:
    return Response(_rendered(), media_type=JSON)
