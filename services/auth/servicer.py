"""The `sluice.auth.v1.AuthService` servicer: decodes requests, calls the domain stores, encodes.

Errors are not handled here: `services.common.grpc_server.ErrorInterceptor` maps the stores'
domain exceptions to gRPC statuses in one place.
"""

from __future__ import annotations

from datetime import datetime

import grpc

from services.auth.orgs import OrgInfo, ProjectInfo
from services.auth.providers import ProviderInfo, ProviderStore
from services.auth.store import KeyInfo, KeyStore
from services.common.errors import Unavailable
from services.common.quota import quota_from_proto, quota_to_proto
from services.pb.auth.v1 import auth_pb2, auth_pb2_grpc

SERVICE_NAME = auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name


def _unix(at: datetime | None) -> int:
    return int(at.timestamp()) if at is not None else 0


def encode_key(info: KeyInfo) -> auth_pb2.KeyInfo:
    return auth_pb2.KeyInfo(
        id=info.id,
        org_name=info.org_name,
        name=info.name,
        fingerprint=info.fingerprint,
        created=_unix(info.created_at),
        revoked=info.revoked,
        org_id=info.org_id,
        project_id=info.project_id,
        project_name=info.project_name,
        allowed_models=info.allowed_models,
        allowed_ips=info.allowed_ips,
        expires=_unix(info.expires_at),
        quota=quota_to_proto(info.quota, auth_pb2.Quota),
        previous_fingerprint=info.previous_fingerprint or "",
        previous_expires=_unix(info.previous_expires_at),
        state=info.state,
    )


def encode_org(info: OrgInfo) -> auth_pb2.Org:
    return auth_pb2.Org(
        id=info.id,
        name=info.name,
        created=_unix(info.created_at),
        default_project_id=info.default_project_id,
    )


def encode_project(info: ProjectInfo) -> auth_pb2.Project:
    return auth_pb2.Project(
        id=info.id,
        org_id=info.org_id,
        org_name=info.org_name,
        name=info.name,
        created=_unix(info.created_at),
        is_default=info.is_default,
    )


def encode_provider(info: ProviderInfo) -> auth_pb2.ProviderInfo:
    return auth_pb2.ProviderInfo(
        id=info.id,
        org_id=info.org_id,
        org_name=info.org_name,
        provider=info.provider,
        name=info.name,
        fingerprint=info.fingerprint,
        created=_unix(info.created_at),
    )


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self, store: KeyStore, providers: ProviderStore | None = None) -> None:
        self._store = store
        self._providers = providers

    @property
    def providers(self) -> ProviderStore:
        if self._providers is None:
            raise Unavailable(
                "provider credentials are not configured on this auth server",
                code="providers_unavailable",
            )
        return self._providers

    async def Authenticate(
        self, request: auth_pb2.AuthenticateRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.Principal:
        p = await self._store.authenticate(request.api_key, request.client_ip, request.model)
        return auth_pb2.Principal(
            org_id=p.org_id,
            org_name=p.org_name,
            key_id=p.key_id,
            key_name=p.key_name,
            project_id=p.project_id,
            project_name=p.project_name,
            key_quota=quota_to_proto(p.key_quota, auth_pb2.Quota),
            allowed_models=p.allowed_models,
        )

    async def CreateOrg(
        self, request: auth_pb2.CreateOrgRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.Org:
        return encode_org(await self._store.orgs.create_org(request.name))

    async def ListOrgs(
        self, request: auth_pb2.ListOrgsRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.ListOrgsResponse:
        orgs = await self._store.orgs.list_orgs()
        return auth_pb2.ListOrgsResponse(orgs=[encode_org(o) for o in orgs])

    async def CreateProject(
        self, request: auth_pb2.CreateProjectRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.Project:
        return encode_project(await self._store.orgs.create_project(request.org, request.name))

    async def ListProjects(
        self, request: auth_pb2.ListProjectsRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.ListProjectsResponse:
        projects = await self._store.orgs.list_projects(request.org or None)
        return auth_pb2.ListProjectsResponse(projects=[encode_project(p) for p in projects])

    async def CreateKey(
        self, request: auth_pb2.CreateKeyRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.CreateKeyResponse:
        info, secret = await self._store.create_key(
            request.org,
            request.name,
            project=request.project,
            allowed_models=list(request.allowed_models),
            allowed_ips=list(request.allowed_ips),
            expires_in_seconds=request.expires_in_seconds,
            quota=quota_from_proto(request.quota),
        )
        return auth_pb2.CreateKeyResponse(key=encode_key(info), secret=secret)

    async def ListKeys(
        self, request: auth_pb2.ListKeysRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.ListKeysResponse:
        infos = await self._store.list_keys(request.org or None, request.project or None)
        return auth_pb2.ListKeysResponse(keys=[encode_key(i) for i in infos])

    async def RevokeKey(
        self, request: auth_pb2.RevokeKeyRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.KeyInfo:
        return encode_key(await self._store.revoke_key(request.key_id))

    async def RotateKey(
        self, request: auth_pb2.RotateKeyRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.CreateKeyResponse:
        info, secret = await self._store.rotate_key(request.key_id, request.grace_seconds)
        return auth_pb2.CreateKeyResponse(key=encode_key(info), secret=secret)

    async def AddProvider(
        self, request: auth_pb2.AddProviderRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.ProviderInfo:
        info = await self.providers.add_provider(
            request.org, request.provider, request.api_key, request.name
        )
        return encode_provider(info)

    async def ListProviders(
        self, request: auth_pb2.ListProvidersRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.ListProvidersResponse:
        infos = await self.providers.list_providers(request.org or None)
        return auth_pb2.ListProvidersResponse(providers=[encode_provider(i) for i in infos])

    async def RemoveProvider(
        self, request: auth_pb2.RemoveProviderRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.ProviderInfo:
        return encode_provider(await self.providers.remove_provider(request.id))

    async def GetProviderCredential(
        self, request: auth_pb2.GetProviderCredentialRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.ProviderCredential:
        cred = await self.providers.get_credential(request.org_id, request.provider)
        return auth_pb2.ProviderCredential(id=cred.id, provider=cred.provider, api_key=cred.api_key)


def add_to_server(
    server: grpc.aio.Server, store: KeyStore, providers: ProviderStore | None = None
) -> None:
    """Registers the servicer; without `providers` the provider RPCs answer UNAVAILABLE."""
    auth_pb2_grpc.add_AuthServiceServicer_to_server(AuthServicer(store, providers), server)
