"""Usage ledger over HTTP: records and totals as JSON or CSV.

`/v1/usage` answers an API key with its own organization's usage and nothing else; the admin API
(`services.edge.admin`) reuses the same query parsing and rendering for any organization.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from services.edge.backends import Backends, backends_of, unary
from services.edge.errors import APIError
from services.edge.governance import authenticate, metering_quota
from services.edge.limits import check_params
from services.pb.metering.v1 import metering_pb2

GROUPS = ("day", "key", "model", "project")
RECORD_FIELDS = (
    "id",
    "created",
    "org_id",
    "project_id",
    "key_id",
    "model",
    "model_digest",
    "provider",
    "endpoint",
    "prompt_tokens",
    "completion_tokens",
    "status",
    "latency_ms",
    "ttft_ms",
    "client_ip",
    "request_id",
)
TOTAL_FIELDS = ("group", "requests", "prompt_tokens", "completion_tokens", "total_tokens")


def to_json(message: Message) -> dict[str, Any]:
    """A protobuf message as plain JSON: field names as in the proto, every field present."""
    out: dict[str, Any] = json_format.MessageToDict(
        message,
        always_print_fields_with_no_presence=True,
        preserving_proto_field_name=True,
        unquote_int64_if_possible=True,
    )
    return out


# The largest values the proto fields they travel in can hold: `limit` is an int32, times are
# unix seconds that become int64 milliseconds.
MAX_LIMIT = 2**31 - 1
MAX_TIME_S = (2**63 - 1) // 1000


def _int_param(request: Request, name: str, maximum: int) -> int:
    raw = request.query_params.get(name, "")
    if not raw:
        return 0
    try:
        value = int(raw)
    except ValueError:
        msg = f"'{name}' must be an integer."
        raise APIError(400, msg, param=name, code="invalid_value") from None
    if not 0 <= value <= maximum:
        msg = f"'{name}' must be an integer from 0 to {maximum}."
        raise APIError(400, msg, param=name, code="invalid_value")
    return value


def usage_filter(request: Request, org_id: str) -> metering_pb2.UsageFilter:
    """Filters from the query string; times are unix seconds, as in OpenAI's usage API."""
    q = request.query_params
    check_params(q)
    return metering_pb2.UsageFilter(
        org_id=org_id,
        project_id=q.get("project_id", ""),
        key_id=q.get("key_id", ""),
        model=q.get("model", ""),
        start_ms=_int_param(request, "start_time", MAX_TIME_S) * 1000,
        end_ms=_int_param(request, "end_time", MAX_TIME_S) * 1000,
    )


def _format(request: Request) -> str:
    fmt = request.query_params.get("format", "json")
    if fmt not in ("json", "csv"):
        raise APIError(400, "'format' must be json or csv.", param="format", code="invalid_value")
    return fmt


def _csv(rows: list[dict[str, Any]], fields: tuple[str, ...]) -> Response:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return Response(buf.getvalue(), media_type="text/csv; charset=utf-8")


async def records_response(
    backends: Backends, request: Request, flt: metering_pb2.UsageFilter
) -> Response:
    """Usage records (newest first) matching `flt`, in the requested format."""
    fmt = _format(request)
    resp = await unary(
        backends.metering.QueryUsage,
        metering_pb2.QueryUsageRequest(filter=flt, limit=_int_param(request, "limit", MAX_LIMIT)),
        "metering",
    )
    rows = [to_json(r) for r in resp.records]
    if fmt == "csv":
        return _csv(rows, RECORD_FIELDS)
    return JSONResponse({"object": "list", "data": rows})


async def totals_response(
    backends: Backends, request: Request, flt: metering_pb2.UsageFilter
) -> Response:
    """Totals grouped by `group_by` (day, key, model or project), in the requested format."""
    fmt = _format(request)
    group_by = request.query_params.get("group_by", "day")
    if group_by not in GROUPS:
        raise APIError(
            400,
            f"'group_by' must be one of {', '.join(GROUPS)}.",
            param="group_by",
            code="invalid_value",
        )
    resp = await unary(
        backends.metering.SummarizeUsage,
        metering_pb2.SummarizeUsageRequest(filter=flt, group_by=group_by),
        "metering",
    )
    rows = [to_json(t) for t in resp.totals]
    if fmt == "csv":
        return _csv(rows, TOTAL_FIELDS)
    return JSONResponse({"object": "list", "group_by": group_by, "data": rows})


async def usage_records(request: Request) -> Response:
    backends = backends_of(request)
    principal = await authenticate(backends, request, "")
    return await records_response(backends, request, usage_filter(request, principal.org_id))


async def usage_totals(request: Request) -> Response:
    backends = backends_of(request)
    principal = await authenticate(backends, request, "")
    return await totals_response(backends, request, usage_filter(request, principal.org_id))


async def usage_budgets(request: Request) -> Response:
    """The budgets that apply to the calling key, with what is used and reserved."""
    backends = backends_of(request)
    p = await authenticate(backends, request, "")
    resp = await unary(
        backends.metering.GetBudgets,
        metering_pb2.GetBudgetsRequest(
            org_id=p.org_id,
            project_id=p.project_id,
            key_id=p.key_id,
            key_quota=metering_quota(p.key_quota),
        ),
        "metering",
    )
    return JSONResponse({"object": "list", "data": [to_json(b) for b in resp.budgets]})
