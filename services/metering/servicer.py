"""The `sluice.metering.v1.MeteringService` gRPC servicer: decodes, calls `Ledger`, encodes.

Errors are not handled here: `services.common.grpc_server.ErrorInterceptor` maps the ledger's
domain exceptions (refusals with their retry-after and x-ratelimit-* metadata included) to gRPC
statuses in one place.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

from services.common.errors import InvalidArgument, SluiceError
from services.common.grpc_server import status_of
from services.common.quota import quota_from_proto, quota_to_proto
from services.metering.budgets import BudgetState
from services.metering.ledger import Ledger, UsageRecord, UsageTotal
from services.metering.plans import Plan, Policy
from services.metering.ratelimit import RateLimitState
from services.pb.metering.v1 import metering_pb2, metering_pb2_grpc

SERVICE_NAME = metering_pb2.DESCRIPTOR.services_by_name["MeteringService"].full_name

log = logging.getLogger(__name__)


def encode_record(r: UsageRecord) -> metering_pb2.UsageRecord:
    return metering_pb2.UsageRecord(
        id=r.id,
        created=r.created_ms // 1000,
        created_ms=r.created_ms,
        org_id=r.org_id,
        key_id=r.key_id,
        model=r.model,
        model_digest=r.model_digest,
        endpoint=r.endpoint,
        prompt_tokens=r.prompt_tokens,
        completion_tokens=r.completion_tokens,
        status=r.status,
        latency_ms=r.latency_ms,
        request_id=r.request_id,
        ttft_ms=r.ttft_ms,
        project_id=r.project_id,
        client_ip=r.client_ip,
        provider=r.provider,
    )


def encode_plan(p: Plan) -> metering_pb2.Plan:
    return metering_pb2.Plan(
        name=p.name,
        monthly_tokens=p.monthly_tokens,
        rpm=p.rpm,
        tpm=p.tpm,
        max_concurrent=p.max_concurrent,
        max_context=p.max_context,
    )


def encode_policy(p: Policy) -> metering_pb2.Policy:
    return metering_pb2.Policy(
        scope=p.scope,
        scope_id=p.scope_id,
        plan=p.plan,
        quota=quota_to_proto(p.quota, metering_pb2.Quota),
    )


def encode_rate_limits(s: RateLimitState) -> metering_pb2.RateLimitState:
    return metering_pb2.RateLimitState(
        limit_requests=s.limit_requests,
        remaining_requests=s.remaining_requests,
        reset_requests_ms=s.reset_requests_ms,
        limit_tokens=s.limit_tokens,
        remaining_tokens=s.remaining_tokens,
        reset_tokens_ms=s.reset_tokens_ms,
    )


def encode_total(t: UsageTotal) -> metering_pb2.UsageTotal:
    return metering_pb2.UsageTotal(
        group=t.group,
        requests=t.requests,
        prompt_tokens=t.prompt_tokens,
        completion_tokens=t.completion_tokens,
        total_tokens=t.total_tokens,
    )


def encode_budget(b: BudgetState) -> metering_pb2.BudgetState:
    return metering_pb2.BudgetState(
        scope=b.scope,
        scope_id=b.scope_id,
        period=b.period,
        period_start_ms=b.period_start_ms,
        limit_tokens=b.limit_tokens,
        used_tokens=b.used_tokens,
        reserved_tokens=b.reserved_tokens,
    )


def call_error(exc: BaseException) -> metering_pb2.CallError:
    """What the error boundary would make of `exc` on a unary call, as a message."""
    code, details, trailers = status_of(exc)
    return metering_pb2.CallError(
        code=code.value[0],
        message=details,
        trailers=[metering_pb2.Trailer(key=k, value=v) for k, v in trailers],
    )


class MeteringServicer(metering_pb2_grpc.MeteringServiceServicer):
    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        # The readers of the open Meter streams, which drain() stops.
        self._readers: set[asyncio.Task[None]] = set()

    def drain(self) -> None:
        """Stops reading every open Meter stream: what was read is answered, then each ends."""
        for reader in self._readers:
            reader.cancel()

    async def Meter(
        self,
        request_iterator: AsyncIterator[metering_pb2.MeterCall],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[metering_pb2.MeterReply]:
        replies: asyncio.Queue[metering_pb2.MeterReply | None] = asyncio.Queue()
        running: set[asyncio.Task[None]] = set()

        async def answer(call: metering_pb2.MeterCall) -> None:
            reply = metering_pb2.MeterReply(id=call.id)
            try:
                if call.HasField("admit"):
                    reply.admit.CopyFrom(await self.Admit(call.admit, context))
                elif call.HasField("settle"):
                    reply.settle.CopyFrom(await self.Settle(call.settle, context))
                else:
                    raise InvalidArgument("a MeterCall names no call")
            except Exception as exc:  # noqa: BLE001 - this is the call's error boundary
                if not isinstance(exc, SluiceError):
                    log.exception("unhandled error in a Meter call", exc_info=exc)
                reply.error.CopyFrom(call_error(exc))
            replies.put_nowait(reply)

        async def read() -> None:
            try:
                async for call in request_iterator:
                    task = asyncio.create_task(answer(call))
                    running.add(task)
                    task.add_done_callback(running.discard)
            except asyncio.CancelledError:
                pass  # drain(): what was read is still answered
            finally:
                # Done reading: a drain from now on must not cancel the wait below.
                self._readers.discard(reader)
                if running:
                    await asyncio.wait(set(running))
                replies.put_nowait(None)

        reader = asyncio.create_task(read())
        self._readers.add(reader)
        try:
            while (reply := await replies.get()) is not None:
                yield reply
        finally:
            self._readers.discard(reader)
            reader.cancel()
            for task in running:
                task.cancel()

    async def Admit(
        self, request: metering_pb2.AdmitRequest, context: grpc.aio.ServicerContext
    ) -> metering_pb2.AdmitResponse:
        admitted = await self._ledger.admit(
            org_id=request.org_id,
            key_id=request.key_id,
            model=request.model,
            upper_bound_tokens=request.upper_bound_tokens,
            endpoint=request.endpoint,
            request_id=request.request_id,
            project_id=request.project_id,
            key_quota=quota_from_proto(request.key_quota),
            client_ip=request.client_ip,
            provider=request.provider,
            prompt_bound_tokens=request.prompt_bound_tokens,
        )
        return metering_pb2.AdmitResponse(
            reservation_id=admitted.reservation_id,
            rate_limits=encode_rate_limits(admitted.rate_limits),
            max_context=admitted.max_context,
            reserved_tokens=admitted.reserved_tokens,
            expires_ms=int(admitted.expires_at * 1000),
        )

    async def Settle(
        self, request: metering_pb2.SettleRequest, context: grpc.aio.ServicerContext
    ) -> metering_pb2.SettleResponse:
        record = await self._ledger.settle(
            reservation_id=request.reservation_id,
            org_id=request.org_id,
            key_id=request.key_id,
            model=request.model,
            model_digest=request.model_digest,
            endpoint=request.endpoint,
            prompt_tokens=request.prompt_tokens,
            completion_tokens=request.completion_tokens,
            status=request.status,
            latency_ms=request.latency_ms,
            ttft_ms=request.ttft_ms,
            request_id=request.request_id,
            project_id=request.project_id,
            client_ip=request.client_ip,
            provider=request.provider,
        )
        return metering_pb2.SettleResponse(record=encode_record(record))

    async def RenewReservation(
        self, request: metering_pb2.RenewReservationRequest, context: grpc.aio.ServicerContext
    ) -> metering_pb2.RenewReservationResponse:
        expires = await self._ledger.renew(request.reservation_id)
        return metering_pb2.RenewReservationResponse(expires_ms=int(expires * 1000))

    async def QueryUsage(
        self, request: metering_pb2.QueryUsageRequest, context: grpc.aio.ServicerContext
    ) -> metering_pb2.QueryUsageResponse:
        f = request.filter
        records = await self._ledger.query_usage(
            # The top-level ids are kept for older callers; the filter's win when both are set.
            org_id=f.org_id or request.org_id,
            key_id=f.key_id or request.key_id,
            project_id=f.project_id,
            model=f.model,
            start_ms=f.start_ms,
            end_ms=f.end_ms,
            limit=request.limit,
        )
        return metering_pb2.QueryUsageResponse(records=[encode_record(r) for r in records])

    async def SummarizeUsage(
        self, request: metering_pb2.SummarizeUsageRequest, context: grpc.aio.ServicerContext
    ) -> metering_pb2.SummarizeUsageResponse:
        f = request.filter
        totals = await self._ledger.summarize_usage(
            request.group_by,
            org_id=f.org_id,
            project_id=f.project_id,
            key_id=f.key_id,
            model=f.model,
            start_ms=f.start_ms,
            end_ms=f.end_ms,
        )
        return metering_pb2.SummarizeUsageResponse(totals=[encode_total(t) for t in totals])

    async def PutPlan(
        self, request: metering_pb2.Plan, context: grpc.aio.ServicerContext
    ) -> metering_pb2.Plan:
        plan = await self._ledger.put_plan(
            Plan(
                name=request.name,
                monthly_tokens=request.monthly_tokens,
                rpm=request.rpm,
                tpm=request.tpm,
                max_concurrent=request.max_concurrent,
                max_context=request.max_context,
            )
        )
        return encode_plan(plan)

    async def ListPlans(
        self, request: metering_pb2.ListPlansRequest, context: grpc.aio.ServicerContext
    ) -> metering_pb2.ListPlansResponse:
        plans = await self._ledger.list_plans()
        return metering_pb2.ListPlansResponse(plans=[encode_plan(p) for p in plans])

    async def SetPolicy(
        self, request: metering_pb2.Policy, context: grpc.aio.ServicerContext
    ) -> metering_pb2.Policy:
        policy = await self._ledger.set_policy(
            Policy(
                scope=request.scope,
                scope_id=request.scope_id,
                plan=request.plan,
                quota=quota_from_proto(request.quota),
            )
        )
        return encode_policy(policy)

    async def GetPolicy(
        self, request: metering_pb2.GetPolicyRequest, context: grpc.aio.ServicerContext
    ) -> metering_pb2.Policy:
        return encode_policy(await self._ledger.get_policy(request.scope, request.scope_id))

    async def GetBudgets(
        self, request: metering_pb2.GetBudgetsRequest, context: grpc.aio.ServicerContext
    ) -> metering_pb2.GetBudgetsResponse:
        states = await self._ledger.get_budgets(
            org_id=request.org_id,
            project_id=request.project_id,
            key_id=request.key_id,
            key_quota=quota_from_proto(request.key_quota),
        )
        return metering_pb2.GetBudgetsResponse(budgets=[encode_budget(b) for b in states])


def add_to_server(server: grpc.aio.Server, ledger: Ledger) -> MeteringServicer:
    servicer = MeteringServicer(ledger)
    metering_pb2_grpc.add_MeteringServiceServicer_to_server(servicer, server)
    return servicer
