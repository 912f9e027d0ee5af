"""Provider credentials of bring-your-own-key models: an organization's OpenAI or Anthropic key,
stored encrypted (see `crypto`), listed without the key, and handed decrypted only to the
engine's upstream backends through `get_credential`.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import delete, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from services.auth.crypto import CredentialKeyMismatch, DataKey, Sealed, associated_data
from services.auth.models import Organization, ProviderCredential
from services.auth.orgs import check_name, get_org
from services.common.errors import InvalidArgument, NotFound
from services.common.sqltypes import utcnow

log = logging.getLogger(__name__)

PROVIDERS = ("openai", "anthropic")
# Bounds on what we accept as a provider key: real ones are tens to a few hundred characters.
_MIN_KEY = 12
_MAX_KEY = 4096


@dataclass(frozen=True)
class ProviderInfo:
    """A stored credential as listings show it: everything but the key."""

    id: str
    org_id: str
    org_name: str
    provider: str
    name: str
    fingerprint: str  # "..." + the key's last 4 characters
    created_at: datetime


@dataclass(frozen=True)
class ProviderSecret:
    """A decrypted credential; the key stays out of repr() so it cannot reach a log by accident."""

    id: str
    provider: str
    api_key: str = field(repr=False)


def check_provider(value: str) -> str:
    provider = value.strip().lower()
    if provider not in PROVIDERS:
        raise InvalidArgument(f"provider must be one of {', '.join(PROVIDERS)}", param="provider")
    return provider


def _check_key(value: str) -> str:
    key = value.strip()
    if (
        not _MIN_KEY <= len(key) <= _MAX_KEY
        or not (key.isascii() and key.isprintable())
        or " " in key
    ):
        # Never echo any of it: it is someone's secret, even when malformed.
        raise InvalidArgument(
            f"api_key must be {_MIN_KEY} to {_MAX_KEY} printable ASCII characters without spaces",
            param="api_key",
        )
    return key


class ProviderStore:
    """Provider credentials over one database, encrypted under one data key."""

    def __init__(
        self, engine: AsyncEngine, data_key: bytes, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._key = DataKey(data_key)
        self._clock = clock

    async def add_provider(
        self, org: str, provider: str, api_key: str, name: str = ""
    ) -> ProviderInfo:
        """Stores a credential for an existing organization (name or id).

        A credential with the same name in that organization is replaced. `name` defaults to
        the provider's name.
        """
        provider = check_provider(provider)
        api_key = _check_key(api_key)
        name = check_name(name or provider, "name")
        for _ in range(3):
            try:
                return await self._replace(org, provider, api_key, name)
            except IntegrityError:
                # Another add of the same name committed between our delete and insert.
                log.debug("concurrent add of provider credential %s; retrying", name)
        raise RuntimeError(f"could not store provider credential {name!r}")

    async def _replace(self, org_ref: str, provider: str, api_key: str, name: str) -> ProviderInfo:
        cred_id = "prov_" + secrets.token_hex(8)
        async with self._sessions.begin() as session:
            org = await get_org(session, org_ref)
            sealed = self._key.seal(api_key, associated_data(org.id, provider, cred_id))
            await session.execute(
                delete(ProviderCredential).where(
                    ProviderCredential.org_id == org.id, ProviderCredential.name == name
                )
            )
            row = ProviderCredential(
                id=cred_id,
                org_id=org.id,
                provider=provider,
                name=name,
                ciphertext=sealed.ciphertext,
                nonce=sealed.nonce,
                key_version=sealed.key_version,
                fingerprint="..." + api_key[-4:],
                created_at=self._clock(),
            )
            session.add(row)
        log.info("stored %s credential %s (%s) for org %s", provider, name, cred_id, org.id)
        return _info(row, org)

    async def list_providers(self, org: str | None = None) -> list[ProviderInfo]:
        """Credentials without keys, oldest first; one organization's (name or id) when set."""
        stmt = (
            select(ProviderCredential, Organization)
            .join(Organization, Organization.id == ProviderCredential.org_id)
            .order_by(ProviderCredential.created_at, ProviderCredential.id)
        )
        if org:
            stmt = stmt.where(or_(Organization.id == org, Organization.name == org))
        async with self._sessions() as session:
            rows = (await session.execute(stmt)).all()
        return [_info(c, o) for c, o in rows]

    async def remove_provider(self, cred_id: str) -> ProviderInfo:
        """Deletes a credential by id; `NotFound` when there is none."""
        async with self._sessions.begin() as session:
            row = (
                await session.execute(
                    select(ProviderCredential, Organization)
                    .join(Organization, Organization.id == ProviderCredential.org_id)
                    .where(ProviderCredential.id == cred_id)
                )
            ).first()
            if row is None:
                raise NotFound(
                    f"no provider credential {cred_id[:64]!r}",
                    code="provider_not_found",
                    param="id",
                )
            await session.execute(
                delete(ProviderCredential).where(ProviderCredential.id == cred_id)
            )
        log.info("removed provider credential %s", cred_id)
        return _info(*row)

    async def get_credential(self, org: str, provider: str) -> ProviderSecret:
        """The decrypted key of the organization's most recently added credential of `provider`.

        `NotFound` (provider_not_configured) when there is none; `CredentialKeyMismatch` when
        the configured data key cannot decrypt it.
        """
        provider = check_provider(provider)
        stmt = (
            select(ProviderCredential)
            .join(Organization, Organization.id == ProviderCredential.org_id)
            .where(
                or_(Organization.id == org, Organization.name == org),
                ProviderCredential.provider == provider,
            )
            .order_by(ProviderCredential.created_at.desc(), ProviderCredential.id.desc())
            .limit(1)
        )
        async with self._sessions() as session:
            row = await session.scalar(stmt)
        if row is None:
            raise NotFound(
                f"organization {org[:200]!r} has no {provider} credential; add one with "
                f"`sluice providers add --org ORG --provider {provider}`",
                code="provider_not_configured",
                param="provider",
            )
        sealed = Sealed(row.ciphertext, row.nonce, row.key_version)
        aad = associated_data(row.org_id, row.provider, row.id)
        try:
            api_key = self._key.open(sealed, aad, f"provider credential {row.id}")
        except CredentialKeyMismatch:
            log.error(
                "cannot decrypt provider credential %s (key version %s)", row.id, row.key_version
            )
            raise
        return ProviderSecret(id=row.id, provider=row.provider, api_key=api_key)


def _info(row: ProviderCredential, org: Organization) -> ProviderInfo:
    return ProviderInfo(
        id=row.id,
        org_id=org.id,
        org_name=org.name,
        provider=row.provider,
        name=row.name,
        fingerprint=row.fingerprint,
        created_at=row.created_at,
    )
