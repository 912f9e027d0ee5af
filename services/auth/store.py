"""Auth's key logic: creating, checking, listing, revoking and rotating API keys. No gRPC here.

`KeyStore` is built once per process with the engine and the HMAC server secret and is what the
servicer (and tests) call; its `orgs` attribute manages organizations and projects.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Select, case, literal, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.auth import keys, netrules, policy
from services.auth.models import ApiKey, Organization, Project
from services.auth.orgs import OrgStore, check_name, get_project
from services.auth.policy import Quota
from services.common.errors import FailedPrecondition, NotFound, PermissionDenied, Unauthenticated
from services.common.sqltypes import UTCDateTime, utcnow

log = logging.getLogger(__name__)

_HINT = "Create a key with `sluice keys create --org ORG --name NAME`."
_KEY_ID = re.compile(r"key_[0-9a-f]{16}")


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
    project_id: str
    project_name: str
    allowed_models: tuple[str, ...]
    allowed_ips: tuple[str, ...]
    expires_at: datetime | None
    quota: Quota
    # Set only while a rotation's grace period runs.
    previous_fingerprint: str | None
    previous_expires_at: datetime | None
    state: str  # "active", "revoked" or "expired"

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
    project_id: str
    project_name: str
    key_quota: Quota
    allowed_models: tuple[str, ...]


class KeyStore:
    """API keys over one database; the server secret keys the stored hashes.

    `clock` returns the current aware UTC time; tests pass a controllable one.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        server_secret: bytes,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if not server_secret:
            raise ValueError("server_secret must not be empty")
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._secret = server_secret
        self._clock = clock
        self.orgs = OrgStore(engine, clock)

    async def create_key(
        self,
        org: str,
        name: str,
        *,
        project: str = "",
        allowed_models: Sequence[str] = (),
        allowed_ips: Sequence[str] = (),
        expires_in_seconds: int = 0,
        quota: Quota | None = None,
    ) -> tuple[KeyInfo, str]:
        """Creates a key (and its organization when missing); returns it with its secret.

        `org` and `project` are names or ids; an empty project means the default one.
        """
        org = check_name(org, "org")
        name = check_name(name, "name")
        # Every check before the organization is created, so bad input leaves nothing behind.
        models = policy.check_models(allowed_models)
        ips = netrules.normalize_allowlist(allowed_ips)
        ttl = policy.check_seconds(expires_in_seconds, "expires_in_seconds")
        checked = policy.check_quota(quota)
        organization = await self.orgs.ensure_org(org)
        secret = keys.generate_key()
        now = self._clock()
        async with self._sessions.begin() as session:
            proj = await get_project(session, organization, project.strip())
            key = ApiKey(
                id="key_" + secrets.token_hex(8),
                org_id=organization.id,
                project_id=proj.id,
                name=name,
                key_hash=keys.hash_key(secret, self._secret),
                fingerprint=keys.fingerprint(secret),
                created_at=now,
                revoked_at=None,
                expires_at=now + timedelta(seconds=ttl) if ttl else None,
                allowed_models=policy.dump_list(models),
                allowed_ips=policy.dump_list(ips),
                rpm=checked.rpm,
                tpm=checked.tpm,
                max_concurrent=checked.max_concurrent,
                budget_tokens=checked.budget_tokens,
                budget_period=checked.budget_period,
            )
            session.add(key)
        log.info(
            "created key %s (%s) for org %s, project %s",
            key.id,
            key.fingerprint,
            organization.name,
            proj.name,
        )
        return self._info(key, organization, proj), secret

    async def authenticate(self, secret: str, client_ip: str = "", model: str = "") -> Principal:
        """The principal a key stands for, after its IP allowlist and allowed models.

        `Unauthenticated` (code invalid_api_key) for malformed, unknown, revoked, expired or
        rotated-out keys; `PermissionDenied` (ip_not_allowed, model_not_allowed) with the key's
        ids in `metadata` otherwise. One database query.
        """
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
        stmt = _with_org_and_project(
            or_(ApiKey.key_hash == digest, ApiKey.previous_key_hash == digest)
        )
        async with self._sessions() as session:
            row = (await session.execute(stmt)).first()
        if row is None:
            log.info("rejected unknown key %s", shown)
            raise _incorrect(shown)
        key, org, project = row
        now = self._clock()
        # The lookup is by a keyed hash nobody outside can compute; compare_digest is the
        # belt to those braces: no early exit on bytes derived from the secret.
        current = hmac.compare_digest(key.key_hash, digest)
        previous = key.previous_key_hash is not None and hmac.compare_digest(
            key.previous_key_hash, digest
        )
        if not (current or previous):
            raise _incorrect(shown)
        if key.revoked_at is not None:
            log.info("rejected revoked key %s (%s)", key.id, shown)
            raise Unauthenticated(
                f"API key {shown} has been revoked. {_HINT}", code="invalid_api_key"
            )
        if not current and (key.previous_expires_at is None or now >= key.previous_expires_at):
            log.info("rejected rotated-out secret of key %s (%s)", key.id, shown)
            raise Unauthenticated(
                f"API key {shown} was replaced by a rotation and no longer works; "
                "use the key's new secret.",
                code="invalid_api_key",
            )
        if key.expires_at is not None and now >= key.expires_at:
            log.info("rejected expired key %s (%s)", key.id, shown)
            raise Unauthenticated(f"API key {shown} has expired. {_HINT}", code="invalid_api_key")
        ids = {"sluice-org-id": org.id, "sluice-project-id": project.id, "sluice-key-id": key.id}
        allowlist = policy.load_list(key.allowed_ips)
        if allowlist:
            client = netrules.parse_client_ip(client_ip)
            if not netrules.ip_allowed(client, allowlist):
                where = str(client) if client is not None else "an unknown address"
                log.info("refused key %s from %s: outside its IP allowlist", key.id, where)
                raise PermissionDenied(
                    f"Requests from {where} are not allowed for API key {shown}.",
                    code="ip_not_allowed",
                    metadata=ids,
                )
        models = policy.load_list(key.allowed_models)
        if not policy.model_allowed(model, models):
            log.info("refused key %s for model %r: not in its allowed models", key.id, model)
            raise PermissionDenied(
                f"API key {shown} is not allowed to use the model {model[:200]!r}.",
                code="model_not_allowed",
                param="model",
                metadata=ids,
            )
        return Principal(
            org_id=org.id,
            org_name=org.name,
            key_id=key.id,
            key_name=key.name,
            project_id=project.id,
            project_name=project.name,
            key_quota=_quota(key),
            allowed_models=models,
        )

    async def list_keys(self, org: str | None = None, project: str | None = None) -> list[KeyInfo]:
        """Keys without secrets, oldest first; filtered by organization and project (name or id)."""
        stmt = _with_org_and_project(None).order_by(ApiKey.created_at, ApiKey.id)
        if org:
            stmt = stmt.where(or_(Organization.id == org, Organization.name == org))
        if project:
            stmt = stmt.where(or_(Project.id == project, Project.name == project))
        async with self._sessions() as session:
            rows = (await session.execute(stmt)).all()
        return [self._info(*row) for row in rows]

    async def revoke_key(self, ref: str) -> KeyInfo:
        """Revokes a key, by id or by a secret that authenticates as it, together with any
        previous secret still in its grace period. Revoking again keeps the first time."""
        now = self._clock()
        at = literal(now, UTCDateTime())
        async with self._sessions.begin() as session:
            key_id = await self._resolve(session, ref, include_previous=True)
            # One conditional UPDATE, so concurrent revokes cannot overwrite the first time.
            await session.execute(
                update(ApiKey)
                .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                .values(
                    revoked_at=at,
                    previous_expires_at=case(
                        (ApiKey.previous_expires_at > at, at),
                        else_=ApiKey.previous_expires_at,
                    ),
                )
                .execution_options(synchronize_session=False)
            )
            row = (await session.execute(_with_org_and_project(ApiKey.id == key_id))).first()
        if row is None:
            raise _not_found(ref)
        log.info("revoked key %s", key_id)
        return self._info(*row)

    async def rotate_key(self, ref: str, grace_seconds: int = 0) -> tuple[KeyInfo, str]:
        """Gives a key (by id or current secret) a new secret; returns it with the secret.

        The previous secret keeps working for `grace_seconds` (0: stops at once). Rotating again
        replaces any earlier previous secret, which ends its grace. `FailedPrecondition` for a
        revoked key.
        """
        grace = policy.check_seconds(grace_seconds, "grace_seconds")
        secret = keys.generate_key()
        now = self._clock()
        async with self._sessions.begin() as session:
            key_id = await self._resolve(session, ref, include_previous=False)
            # The right-hand sides read the row as it was before this UPDATE (on PostgreSQL and
            # SQLite alike), so the old hash moves to previous_key_hash in one statement.
            await session.execute(
                update(ApiKey)
                .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                .values(
                    key_hash=keys.hash_key(secret, self._secret),
                    fingerprint=keys.fingerprint(secret),
                    previous_key_hash=ApiKey.key_hash,
                    previous_fingerprint=ApiKey.fingerprint,
                    previous_expires_at=now + timedelta(seconds=grace),
                )
                .execution_options(synchronize_session=False)
            )
            row = (await session.execute(_with_org_and_project(ApiKey.id == key_id))).first()
        if row is None:
            raise _not_found(ref)
        # The UPDATE holds the row until commit, so a key seen revoked here was revoked before
        # it and kept its secret.
        if row[0].revoked_at is not None:
            raise FailedPrecondition(
                f"API key {row[0].id} has been revoked and cannot be rotated",
                code="key_revoked",
                param="key_id",
            )
        log.info("rotated key %s (grace %ss)", key_id, grace)
        return self._info(*row), secret

    async def _resolve(self, session: AsyncSession, ref: str, *, include_previous: bool) -> str:
        """The id of the key `ref` names: an id, or a well-formed secret resolved by its hash.

        With `include_previous`, a rotated-out secret still in its grace period counts too.
        """
        if not keys.is_well_formed(ref):
            return ref
        digest = keys.hash_key(ref, self._secret)
        cond = ApiKey.key_hash == digest
        if include_previous:
            cond = or_(
                cond,
                (ApiKey.previous_key_hash == digest)
                & (ApiKey.previous_expires_at > literal(self._clock(), UTCDateTime())),
            )
        key_id = await session.scalar(select(ApiKey.id).where(cond))
        if key_id is None:
            raise _not_found(ref)
        return key_id

    def _info(self, key: ApiKey, org: Organization, project: Project) -> KeyInfo:
        now = self._clock()
        in_grace = (
            key.revoked_at is None
            and key.previous_expires_at is not None
            and now < key.previous_expires_at
        )
        if key.revoked_at is not None:
            state = "revoked"
        elif key.expires_at is not None and now >= key.expires_at:
            state = "expired"
        else:
            state = "active"
        return KeyInfo(
            id=key.id,
            org_id=org.id,
            org_name=org.name,
            name=key.name,
            fingerprint=key.fingerprint,
            created_at=key.created_at,
            revoked_at=key.revoked_at,
            project_id=project.id,
            project_name=project.name,
            allowed_models=policy.load_list(key.allowed_models),
            allowed_ips=policy.load_list(key.allowed_ips),
            expires_at=key.expires_at,
            quota=_quota(key),
            previous_fingerprint=key.previous_fingerprint if in_grace else None,
            previous_expires_at=key.previous_expires_at if in_grace else None,
            state=state,
        )


def _with_org_and_project(
    where: ColumnElement[bool] | None,
) -> Select[ApiKey, Organization, Project]:
    stmt = (
        select(ApiKey, Organization, Project)
        .join(Organization, Organization.id == ApiKey.org_id)
        .join(Project, Project.id == ApiKey.project_id)
    )
    return stmt if where is None else stmt.where(where)


def _quota(key: ApiKey) -> Quota:
    return Quota(
        rpm=key.rpm,
        tpm=key.tpm,
        max_concurrent=key.max_concurrent,
        budget_tokens=key.budget_tokens,
        budget_period=key.budget_period,
    )


def _incorrect(shown: str) -> Unauthenticated:
    return Unauthenticated(f"Incorrect API key provided: {shown}. {_HINT}", code="invalid_api_key")


def _not_found(ref: str) -> NotFound:
    # Someone may paste a secret where the id belongs; echo only what looks like a key id.
    shown = repr(ref) if _KEY_ID.fullmatch(ref) else keys.redact(ref)
    return NotFound(f"no API key {shown}", code="key_not_found", param="key_id")
