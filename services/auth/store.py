"""Auth's domain logic: creating, checking, listing and revoking API keys. No gRPC here.

`KeyStore` is built once per process with the engine and the HMAC server secret and is what the
servicer (and tests) call.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from services.auth import keys
from services.auth.models import ApiKey, Organization
from services.common.errors import InvalidArgument, NotFound, Unauthenticated
from services.common.sqltypes import utcnow

log = logging.getLogger(__name__)

_HINT = "Create a key with `sluice keys create --org ORG --name NAME`."
_MAX_NAME = 200


@dataclass(frozen=True)
class KeyInfo:
    """A key as listings show it: everything but the secret."""

    id: str
    org_id: str
    org_name: str
    name: str
    fingerprint: str
    created_at: datetime
    revoked_at: datetime | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


@dataclass(frozen=True)
class Principal:
    """Who a request runs as, once its key has been checked."""

    org_id: str
    org_name: str
    key_id: str
    key_name: str


def _check_name(value: str, what: str) -> str:
    value = value.strip()
    if not value or len(value) > _MAX_NAME:
        raise InvalidArgument(f"{what} must be 1 to {_MAX_NAME} characters", param=what)
    return value


class KeyStore:
    """API keys over one database; the server secret keys the stored hashes."""

    def __init__(self, engine: AsyncEngine, server_secret: bytes) -> None:
        if not server_secret:
            raise ValueError("server_secret must not be empty")
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._secret = server_secret

    async def create_key(self, org_name: str, key_name: str) -> tuple[KeyInfo, str]:
        """Creates a key (and its organization when missing); returns it with its secret."""
        org_name = _check_name(org_name, "org")
        key_name = _check_name(key_name, "name")
        org = await self._ensure_org(org_name)
        secret = keys.generate_key()
        key = ApiKey(
            id="key_" + secrets.token_hex(8),
            org_id=org.id,
            name=key_name,
            key_hash=keys.hash_key(secret, self._secret),
            fingerprint=keys.fingerprint(secret),
            created_at=utcnow(),
            revoked_at=None,
        )
        async with self._sessions.begin() as session:
            session.add(key)
        log.info("created key %s (%s) for org %s", key.id, key.fingerprint, org_name)
        return _info(key, org), secret

    async def _ensure_org(self, name: str) -> Organization:
        """The organization by name, created if needed; safe when callers race to create it."""
        for _ in range(3):
            org = await self._find_org(name)
            if org is not None:
                return org
            org = Organization(id=uuid.uuid4().hex, name=name, created_at=utcnow())
            try:
                # Its own short transaction: a losing racer hits the unique name, rolls back
                # only this insert and reads the winner's row on the next pass.
                async with self._sessions.begin() as session:
                    session.add(org)
            except IntegrityError:
                log.debug("lost the race to create organization %s; reading the winner's", name)
                continue
            log.info("created organization %s", name)
            return org
        raise RuntimeError(f"could not create or find organization {name!r}")

    async def _find_org(self, name: str) -> Organization | None:
        async with self._sessions() as session:
            return await session.scalar(select(Organization).where(Organization.name == name))

    async def authenticate(self, secret: str) -> Principal:
        """The principal a key stands for; `Unauthenticated` for malformed, unknown or revoked."""
        if not secret:
            raise Unauthenticated(
                "You didn't provide an API key. Send it as `Authorization: Bearer KEY`.",
                code="invalid_api_key",
            )
        shown = keys.redact(secret)
        # Typos and foreign strings stop here, before any database round trip.
        if not keys.is_well_formed(secret):
            raise _incorrect(shown)
        digest = keys.hash_key(secret, self._secret)
        stmt = (
            select(ApiKey, Organization)
            .join(Organization, Organization.id == ApiKey.org_id)
            .where(ApiKey.key_hash == digest)
        )
        async with self._sessions() as session:
            row = (await session.execute(stmt)).first()
        # The lookup is by a keyed hash nobody outside can compute; compare_digest is the
        # belt to those braces: no early exit on bytes derived from the secret.
        if row is None or not hmac.compare_digest(row[0].key_hash, digest):
            log.info("rejected unknown key %s", shown)
            raise _incorrect(shown)
        key, org = row
        if key.revoked_at is not None:
            log.info("rejected revoked key %s (%s)", key.id, shown)
            raise Unauthenticated(
                f"API key {shown} has been revoked. {_HINT}", code="invalid_api_key"
            )
        return Principal(org_id=org.id, org_name=org.name, key_id=key.id, key_name=key.name)

    async def list_keys(self, org_name: str | None = None) -> list[KeyInfo]:
        """Keys without secrets, oldest first; every organization's when `org_name` is empty."""
        stmt = (
            select(ApiKey, Organization)
            .join(Organization, Organization.id == ApiKey.org_id)
            .order_by(ApiKey.created_at, ApiKey.id)
        )
        if org_name:
            stmt = stmt.where(Organization.name == org_name)
        async with self._sessions() as session:
            rows = (await session.execute(stmt)).all()
        return [_info(key, org) for key, org in rows]

    async def revoke_key(self, key_id: str) -> KeyInfo:
        """Revokes a key at once; revoking it again keeps the first revocation time."""
        async with self._sessions.begin() as session:
            # One conditional UPDATE, so concurrent revokes cannot overwrite the first time.
            await session.execute(
                update(ApiKey)
                .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                .values(revoked_at=utcnow())
                .execution_options(synchronize_session=False)
            )
            row = (
                await session.execute(
                    select(ApiKey, Organization)
                    .join(Organization, Organization.id == ApiKey.org_id)
                    .where(ApiKey.id == key_id)
                )
            ).first()
        if row is None:
            # Someone may paste a secret where the id belongs; never echo it back.
            shown = keys.redact(key_id) if key_id.startswith(keys.PREFIX) else repr(key_id)
            raise NotFound(f"no API key with id {shown}", code="key_not_found", param="key_id")
        log.info("revoked key %s", key_id)
        return _info(*row)


def _incorrect(shown: str) -> Unauthenticated:
    return Unauthenticated(f"Incorrect API key provided: {shown}. {_HINT}", code="invalid_api_key")


def _info(key: ApiKey, org: Organization) -> KeyInfo:
    return KeyInfo(
        id=key.id,
        org_id=org.id,
        org_name=org.name,
        name=key.name,
        fingerprint=key.fingerprint,
        created_at=key.created_at,
        revoked_at=key.revoked_at,
    )
