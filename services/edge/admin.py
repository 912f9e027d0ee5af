"""The operator's HTTP API under `/admin/v1/`: orgs, projects, keys, plans, usage, providers.

Guarded by the operator token (`SLUICE_ADMIN_TOKEN`, or the file `data_dir/admin_token`), which is
not an API key: an API key is refused here and the token is refused on `/v1`. Bodies are the
protos' messages in JSON (field names as in `protos/`), so the admin API, the CLI and internal gRPC
callers share one contract. Handlers stay thin: they decode, call auth or metering, encode.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.edge.backends import Backends, backends_of, unary
from services.edge.body import read_json_object
from services.edge.errors import APIError
from services.edge.limits import check_names, check_params
from services.edge.usage import records_response, to_json, totals_response, usage_filter
from services.pb.auth.v1 import auth_pb2
from services.pb.metering.v1 import metering_pb2

_M = TypeVar("_M", bound=Message)


def _backends(request: Request) -> Backends:
    """The backends, once the operator token has been checked (constant time)."""
    backends = backends_of(request)
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), backends.admin_token
    ):
        raise APIError(
            401,
            "The admin API needs the operator token as 'Authorization: Bearer TOKEN' "
            "(SLUICE_ADMIN_TOKEN, or the admin_token file in the data directory).",
            code="invalid_admin_token",
        )
    check_params(request.path_params)
    check_params(request.query_params)
    return backends


async def _json(request: Request) -> dict[str, Any]:
    """The body, its strings free of what the databases cannot store (services.edge.limits)."""
    body = await read_json_object(request)
    check_names(body)
    return body


def _parse(data: Any, message: _M) -> _M:
    """JSON into a proto message; a wrong field or type is the client's 400."""
    if not isinstance(data, dict):
        name = message.DESCRIPTOR.name
        raise APIError(
            400, f"Invalid request body: {name} must be an object.", code="invalid_value"
        )
    try:
        json_format.ParseDict(data, message)
    except json_format.ParseError as exc:
        raise APIError(400, f"Invalid request body: {exc}", code="invalid_value") from None
    return message


async def _body(request: Request, message: _M, **from_path: Any) -> _M:
    """The body as `message`; what the path names (a key, a plan) wins over the body."""
    body = {**await read_json_object(request), **from_path}
    check_names(body)
    return _parse(body, message)


def _text(body: dict[str, Any], name: str) -> str:
    """A string field of a body that is not a proto message ("" when absent)."""
    value = body.get(name, "")
    if not isinstance(value, str):
        raise APIError(400, f"'{name}' must be a string.", param=name, code="invalid_value")
    return value


async def _org(backends: Backends, ref: str) -> auth_pb2.Org:
    """An organization by id or name."""
    orgs = await unary(backends.auth.ListOrgs, auth_pb2.ListOrgsRequest(), "auth")
    for org in orgs.orgs:
        if ref in (org.id, org.name):
            return org
    raise APIError(404, f"No organization {ref!r}.", code="org_not_found", param="org")


async def _policy(backends: Backends, scope: str, scope_id: str) -> metering_pb2.Policy:
    return await unary(
        backends.metering.GetPolicy,
        metering_pb2.GetPolicyRequest(scope=scope, scope_id=scope_id),
        "metering",
    )


async def _org_json(backends: Backends, org: auth_pb2.Org) -> dict[str, Any]:
    return {**to_json(org), "policy": to_json(await _policy(backends, "org", org.id))}


async def _update_policy(
    backends: Backends, request: Request, scope: str, scope_id: str
) -> metering_pb2.Policy:
    """Applies a partial policy body ({"plan": ..., "quota": {...}}) over the current policy."""
    current = await _policy(backends, scope, scope_id)
    body = await _json(request)
    merged = to_json(current)
    if "plan" in body:
        merged["plan"] = body["plan"]
    quota = body.get("quota") or {}
    if not isinstance(quota, dict):
        raise APIError(400, "'quota' must be an object.", param="quota", code="invalid_value")
    merged["quota"] = {**merged.get("quota", {}), **quota}
    merged.update(scope=scope, scope_id=scope_id)
    policy = _parse(merged, metering_pb2.Policy())
    return await unary(backends.metering.SetPolicy, policy, "metering")


# Organizations ------------------------------------------------------------------------------


async def create_org(request: Request) -> Response:
    backends = _backends(request)
    body = await _json(request)
    org = await unary(
        backends.auth.CreateOrg, auth_pb2.CreateOrgRequest(name=_text(body, "name")), "auth"
    )
    if plan := body.get("plan"):
        await unary(
            backends.metering.SetPolicy,
            metering_pb2.Policy(scope="org", scope_id=org.id, plan=str(plan)),
            "metering",
        )
    return JSONResponse(await _org_json(backends, org), status_code=201)


async def list_orgs(request: Request) -> Response:
    backends = _backends(request)
    orgs = await unary(backends.auth.ListOrgs, auth_pb2.ListOrgsRequest(), "auth")
    data = await asyncio.gather(*(_org_json(backends, o) for o in orgs.orgs))
    return JSONResponse({"object": "list", "data": list(data)})


async def get_org(request: Request) -> Response:
    backends = _backends(request)
    org = await _org(backends, request.path_params["org"])
    return JSONResponse(await _org_json(backends, org))


async def update_org(request: Request) -> Response:
    """Changes an organization's plan and/or limits; takes effect on its next request."""
    backends = _backends(request)
    org = await _org(backends, request.path_params["org"])
    await _update_policy(backends, request, "org", org.id)
    return JSONResponse(await _org_json(backends, org))


# Projects -----------------------------------------------------------------------------------


async def create_project(request: Request) -> Response:
    backends = _backends(request)
    body = await _json(request)
    # Parsed before anything is created, so a bad quota leaves no project behind.
    quota = _parse(body.get("quota") or {}, metering_pb2.Quota())
    project = await unary(
        backends.auth.CreateProject,
        auth_pb2.CreateProjectRequest(org=_text(body, "org"), name=_text(body, "name")),
        "auth",
    )
    if body.get("quota"):
        policy = metering_pb2.Policy(scope="project", scope_id=project.id, quota=quota)
        await unary(backends.metering.SetPolicy, policy, "metering")
    policy = await _policy(backends, "project", project.id)
    return JSONResponse({**to_json(project), "policy": to_json(policy)}, status_code=201)


async def list_projects(request: Request) -> Response:
    backends = _backends(request)
    org = request.query_params.get("org", "")
    resp = await unary(backends.auth.ListProjects, auth_pb2.ListProjectsRequest(org=org), "auth")
    policies = await asyncio.gather(*(_policy(backends, "project", p.id) for p in resp.projects))
    data = [
        {**to_json(p), "policy": to_json(pol)}
        for p, pol in zip(resp.projects, policies, strict=True)
    ]
    return JSONResponse({"object": "list", "data": data})


async def update_project(request: Request) -> Response:
    backends = _backends(request)
    policy = await _update_policy(backends, request, "project", request.path_params["project"])
    return JSONResponse(to_json(policy))


# Keys ---------------------------------------------------------------------------------------


async def create_key(request: Request) -> Response:
    backends = _backends(request)
    req = await _body(request, auth_pb2.CreateKeyRequest())
    resp = await unary(backends.auth.CreateKey, req, "auth")
    return JSONResponse(to_json(resp), status_code=201)


async def list_keys(request: Request) -> Response:
    backends = _backends(request)
    q = request.query_params
    resp = await unary(
        backends.auth.ListKeys,
        auth_pb2.ListKeysRequest(org=q.get("org", ""), project=q.get("project", "")),
        "auth",
    )
    return JSONResponse({"object": "list", "data": [to_json(k) for k in resp.keys]})


async def revoke_key(request: Request) -> Response:
    backends = _backends(request)
    req = auth_pb2.RevokeKeyRequest(key_id=request.path_params["key"])
    return JSONResponse(to_json(await unary(backends.auth.RevokeKey, req, "auth")))


async def rotate_key(request: Request) -> Response:
    """A new secret for the key; the old one works for `grace_seconds` more (default 0)."""
    backends = _backends(request)
    req = await _body(request, auth_pb2.RotateKeyRequest(), key_id=request.path_params["key"])
    return JSONResponse(to_json(await unary(backends.auth.RotateKey, req, "auth")))


# Plans --------------------------------------------------------------------------------------


async def list_plans(request: Request) -> Response:
    backends = _backends(request)
    resp = await unary(backends.metering.ListPlans, metering_pb2.ListPlansRequest(), "metering")
    return JSONResponse({"object": "list", "data": [to_json(p) for p in resp.plans]})


async def put_plan(request: Request) -> Response:
    backends = _backends(request)
    plan = await _body(request, metering_pb2.Plan(), name=request.path_params["plan"])
    return JSONResponse(to_json(await unary(backends.metering.PutPlan, plan, "metering")))


# Usage --------------------------------------------------------------------------------------


async def _admin_filter(backends: Backends, request: Request) -> metering_pb2.UsageFilter:
    org = request.query_params.get("org", "")
    org_id = (await _org(backends, org)).id if org else ""
    return usage_filter(request, org_id)


async def usage_records(request: Request) -> Response:
    backends = _backends(request)
    return await records_response(backends, request, await _admin_filter(backends, request))


async def usage_totals(request: Request) -> Response:
    backends = _backends(request)
    return await totals_response(backends, request, await _admin_filter(backends, request))


# Provider credentials (bring your own key) ------------------------------------------------


async def add_provider(request: Request) -> Response:
    """Stores a provider key encrypted; the response shows only its fingerprint."""
    backends = _backends(request)
    req = await _body(request, auth_pb2.AddProviderRequest())
    return JSONResponse(to_json(await unary(backends.auth.AddProvider, req, "auth")), 201)


async def list_providers(request: Request) -> Response:
    backends = _backends(request)
    req = auth_pb2.ListProvidersRequest(org=request.query_params.get("org", ""))
    resp = await unary(backends.auth.ListProviders, req, "auth")
    return JSONResponse({"object": "list", "data": [to_json(p) for p in resp.providers]})


async def remove_provider(request: Request) -> Response:
    backends = _backends(request)
    req = auth_pb2.RemoveProviderRequest(id=request.path_params["provider"])
    return JSONResponse(to_json(await unary(backends.auth.RemoveProvider, req, "auth")))


ROUTES = [
    Route("/admin/v1/organizations", create_org, methods=["POST"]),
    Route("/admin/v1/organizations", list_orgs, methods=["GET"]),
    Route("/admin/v1/organizations/{org}", get_org, methods=["GET"]),
    Route("/admin/v1/organizations/{org}", update_org, methods=["PATCH"]),
    Route("/admin/v1/projects", create_project, methods=["POST"]),
    Route("/admin/v1/projects", list_projects, methods=["GET"]),
    Route("/admin/v1/projects/{project}", update_project, methods=["PATCH"]),
    Route("/admin/v1/keys", create_key, methods=["POST"]),
    Route("/admin/v1/keys", list_keys, methods=["GET"]),
    Route("/admin/v1/keys/{key}/revoke", revoke_key, methods=["POST"]),
    Route("/admin/v1/keys/{key}/rotate", rotate_key, methods=["POST"]),
    Route("/admin/v1/plans", list_plans, methods=["GET"]),
    Route("/admin/v1/plans/{plan}", put_plan, methods=["PUT"]),
    Route("/admin/v1/usage", usage_records, methods=["GET"]),
    Route("/admin/v1/usage/totals", usage_totals, methods=["GET"]),
    Route("/admin/v1/providers", add_provider, methods=["POST"]),
    Route("/admin/v1/providers", list_providers, methods=["GET"]),
    Route("/admin/v1/providers/{provider}", remove_provider, methods=["DELETE"]),
]
