"""In-memory auth and metering servicers for CLI tests: just enough behaviour to answer the CLI,
and every request kept, so tests can check exactly what each command sent."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any, NoReturn

import grpc

from services.pb.auth.v1 import auth_pb2, auth_pb2_grpc
from services.pb.metering.v1 import metering_pb2, metering_pb2_grpc

NOW = 1_714_564_800  # 2024-05-01T12:00:00Z


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, details: str) -> NoReturn:
    context.abort(code, details)
    raise AssertionError("abort returned")  # it raises; this tells the type checker so


class Recorder:
    """The requests a fake received, by method name."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def record(self, method: str, request: Any) -> None:
        copy = type(request)()
        copy.CopyFrom(request)
        self.calls.append((method, copy))

    def sent(self, method: str) -> list[Any]:
        return [r for m, r in self.calls if m == method]

    def methods(self) -> list[str]:
        return [m for m, _ in self.calls]


class FakeAuth(auth_pb2_grpc.AuthServiceServicer, Recorder):
    def __init__(self) -> None:
        Recorder.__init__(self)
        self._ids: Iterator[int] = itertools.count(1)
        self.orgs: list[auth_pb2.Org] = []
        self.projects: list[auth_pb2.Project] = []
        self.keys: dict[str, auth_pb2.KeyInfo] = {}
        self.secrets: dict[str, str] = {}  # secret -> key id
        self.providers: dict[str, auth_pb2.ProviderInfo] = {}

    def _id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):04d}"

    def _org(self, ref: str) -> auth_pb2.Org | None:
        return next((o for o in self.orgs if ref in (o.id, o.name)), None)

    def add_org(self, name: str) -> auth_pb2.Org:
        org = auth_pb2.Org(id=self._id("org"), name=name, created=NOW)
        self.orgs.append(org)
        default = self.add_project(org, "default", is_default=True)
        org.default_project_id = default.id
        return org

    def add_project(self, org: auth_pb2.Org, name: str, is_default: bool = False) -> Any:
        project = auth_pb2.Project(
            id=self._id("proj"), org_id=org.id, org_name=org.name, name=name, created=NOW,
            is_default=is_default,
        )  # fmt: skip
        self.projects.append(project)
        return project

    def _new_secret(self, key_id: str) -> str:
        secret = f"sk-sluice-fake{next(self._ids):08d}"
        self.secrets[secret] = key_id
        return secret

    def _key(self, ref: str, context: grpc.ServicerContext) -> auth_pb2.KeyInfo:
        key = self.keys.get(self.secrets.get(ref, ref))
        if key is None:
            shown = "sk-sluice-..." if ref.startswith("sk-") else repr(ref)
            _abort(context, grpc.StatusCode.NOT_FOUND, f"no API key with id {shown}")
        return key

    def CreateOrg(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.record("CreateOrg", request)
        if self._org(request.name):
            _abort(context, grpc.StatusCode.ALREADY_EXISTS, f"org {request.name!r} exists")
        return self.add_org(request.name)

    def ListOrgs(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.record("ListOrgs", request)
        return auth_pb2.ListOrgsResponse(orgs=self.orgs)

    def CreateProject(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.record("CreateProject", request)
        org = self._org(request.org)
        if org is None:
            _abort(context, grpc.StatusCode.NOT_FOUND, f"no organization {request.org!r}")
        return self.add_project(org, request.name)

    def ListProjects(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.record("ListProjects", request)
        found = [p for p in self.projects if request.org in ("", p.org_id, p.org_name)]
        return auth_pb2.ListProjectsResponse(projects=found)

    def CreateKey(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.record("CreateKey", request)
        org = self._org(request.org) or self.add_org(request.org)
        project = next(
            (
                p
                for p in self.projects
                if p.org_id == org.id
                and (p.is_default if not request.project else request.project in (p.id, p.name))
            ),
            None,
        )
        if project is None:
            _abort(context, grpc.StatusCode.NOT_FOUND, f"no project {request.project!r}")
        key_id = self._id("key")
        secret = self._new_secret(key_id)
        key = auth_pb2.KeyInfo(
            id=key_id, org_name=org.name, name=request.name, fingerprint="..." + secret[-4:],
            created=NOW, org_id=org.id, project_id=project.id, project_name=project.name,
            allowed_models=request.allowed_models, allowed_ips=request.allowed_ips,
            expires=NOW + request.expires_in_seconds if request.expires_in_seconds else 0,
            quota=request.quota, state="active",
        )  # fmt: skip
        self.keys[key_id] = key
        return auth_pb2.CreateKeyResponse(key=key, secret=secret)

    def ListKeys(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.record("ListKeys", request)
        found = [
            k
            for k in self.keys.values()
            if (not request.org or request.org in (k.org_id, k.org_name))
            and (not request.project or request.project in (k.project_id, k.project_name))
        ]
        return auth_pb2.ListKeysResponse(keys=found)

    def RevokeKey(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.record("RevokeKey", request)
        key = self._key(request.key_id, context)
        key.revoked, key.state = True, "revoked"
        return key

    def RotateKey(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.record("RotateKey", request)
        key = self._key(request.key_id, context)
        secret = self._new_secret(key.id)
        key.previous_fingerprint = key.fingerprint
        key.previous_expires = NOW + request.grace_seconds if request.grace_seconds else 0
        key.fingerprint = "..." + secret[-4:]
        return auth_pb2.CreateKeyResponse(key=key, secret=secret)

    def AddProvider(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.record("AddProvider", request)
        if request.api_key.startswith("bad-"):
            # A careless service that echoes the input: the CLI must still not print it.
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"malformed key {request.api_key}")
        org = self._org(request.org)
        if org is None:
            _abort(context, grpc.StatusCode.NOT_FOUND, f"no organization {request.org!r}")
        info = auth_pb2.ProviderInfo(
            id=self._id("prov"), org_id=org.id, org_name=org.name, provider=request.provider,
            name=request.name or request.provider, fingerprint="..." + request.api_key[-4:],
            created=NOW,
        )  # fmt: skip
        self.providers[info.id] = info
        return info

    def ListProviders(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.record("ListProviders", request)
        found = [p for p in self.providers.values() if request.org in ("", p.org_id, p.org_name)]
        return auth_pb2.ListProvidersResponse(providers=found)

    def RemoveProvider(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.record("RemoveProvider", request)
        info = self.providers.pop(request.id, None)
        if info is None:
            _abort(context, grpc.StatusCode.NOT_FOUND, f"no provider credential {request.id!r}")
        return info


class FakeMetering(metering_pb2_grpc.MeteringServiceServicer, Recorder):
    def __init__(self) -> None:
        Recorder.__init__(self)
        self.plans: dict[str, metering_pb2.Plan] = {}
        self.policies: dict[tuple[str, str], metering_pb2.Policy] = {}
        self.records: list[metering_pb2.UsageRecord] = []
        self.totals: list[metering_pb2.UsageTotal] = []

    def QueryUsage(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.record("QueryUsage", request)
        f = request.filter
        found = [
            r
            for r in self.records
            if all(
                not want or want == have
                for want, have in (
                    (f.org_id, r.org_id),
                    (f.project_id, r.project_id),
                    (f.key_id, r.key_id),
                    (f.model, r.model),
                )
            )
        ]
        return metering_pb2.QueryUsageResponse(records=found[: request.limit or 100])

    def SummarizeUsage(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.record("SummarizeUsage", request)
        return metering_pb2.SummarizeUsageResponse(totals=self.totals)

    def PutPlan(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.record("PutPlan", request)
        self.plans[request.name] = request
        return request

    def ListPlans(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.record("ListPlans", request)
        plans = sorted(self.plans.values(), key=lambda p: p.name)
        return metering_pb2.ListPlansResponse(plans=plans)

    def SetPolicy(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.record("SetPolicy", request)
        if request.plan and request.plan not in self.plans:
            _abort(context, grpc.StatusCode.NOT_FOUND, f"no plan {request.plan!r}")
        self.policies[(request.scope, request.scope_id)] = request
        return request

    def GetPolicy(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.record("GetPolicy", request)
        return self.policies.get((request.scope, request.scope_id), metering_pb2.Policy())
