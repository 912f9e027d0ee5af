"""Organizations and their projects: creating, listing and resolving them by name or id.

Every organization has a default project named "default", created in the same transaction as
the organization (also when `CreateKey` creates the organization implicitly), so a key always
belongs to a project. The `find_*`/`get_*` helpers run inside a caller's session, so the key and
provider stores resolve names and ids in their own transactions.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.auth.models import Organization, Project
from services.common.errors import AlreadyExists, InvalidArgument, NotFound
from services.common.sqltypes import utcnow

log = logging.getLogger(__name__)

DEFAULT_PROJECT = "default"
MAX_NAME = 200


@dataclass(frozen=True)
class OrgInfo:
    id: str
    name: str
    created_at: datetime
    default_project_id: str


@dataclass(frozen=True)
class ProjectInfo:
    id: str
    org_id: str
    org_name: str
    name: str
    created_at: datetime
    is_default: bool


def check_name(value: str, what: str) -> str:
    """A stripped name of 1 to `MAX_NAME` characters; `InvalidArgument` naming `what`."""
    value = value.strip()
    if not value or len(value) > MAX_NAME:
        raise InvalidArgument(f"{what} must be 1 to {MAX_NAME} characters", param=what)
    return value


def new_project(org_id: str, name: str, now: datetime, *, is_default: bool = False) -> Project:
    return Project(
        id="proj_" + secrets.token_hex(8),
        org_id=org_id,
        name=name,
        created_at=now,
        is_default=is_default,
    )


def project_info(project: Project, org: Organization) -> ProjectInfo:
    return ProjectInfo(
        id=project.id,
        org_id=org.id,
        org_name=org.name,
        name=project.name,
        created_at=project.created_at,
        is_default=project.is_default,
    )


def _shown(ref: str) -> str:
    # repr() escapes control characters; the cap keeps a pasted blob out of the message.
    return repr(ref[:MAX_NAME])


async def find_org(session: AsyncSession, ref: str) -> Organization | None:
    """The organization whose id or name is `ref`; an id match wins over a name match."""
    rows = (
        await session.scalars(
            select(Organization).where(or_(Organization.id == ref, Organization.name == ref))
        )
    ).all()
    for org in rows:
        if org.id == ref:
            return org
    return rows[0] if rows else None


async def get_org(session: AsyncSession, ref: str, param: str = "org") -> Organization:
    """Like `find_org`, but `NotFound` when there is none."""
    org = await find_org(session, ref) if ref else None
    if org is None:
        raise NotFound(f"no organization {_shown(ref)}", code="org_not_found", param=param)
    return org


async def get_project(
    session: AsyncSession, org: Organization, ref: str, param: str = "project"
) -> Project:
    """The project of `org` whose id or name is `ref` (empty: the default project).

    `NotFound` when it does not exist or belongs to another organization.
    """
    cond = Project.is_default.is_(True) if not ref else or_(Project.id == ref, Project.name == ref)
    rows = (await session.scalars(select(Project).where(Project.org_id == org.id, cond))).all()
    for project in rows:
        if not ref or project.id == ref:
            return project
    if rows:
        return rows[0]
    what = "default project" if not ref else f"project {_shown(ref)}"
    raise NotFound(
        f"organization {org.name!r} has no {what}", code="project_not_found", param=param
    )


class OrgStore:
    """Organizations and projects over one database."""

    def __init__(self, engine: AsyncEngine, clock: Callable[[], datetime] = utcnow) -> None:
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._clock = clock

    async def create_org(self, name: str) -> OrgInfo:
        """A new organization with its default project; `AlreadyExists` when the name is taken."""
        name = check_name(name, "name")
        try:
            org, project = await self._insert_org(name)
        except IntegrityError:
            raise AlreadyExists(
                f"organization {name!r} already exists", code="org_exists", param="name"
            ) from None
        return OrgInfo(org.id, org.name, org.created_at, project.id)

    async def ensure_org(self, ref: str) -> Organization:
        """The organization named (or with id) `ref`, created with its default project if needed.

        Safe when callers race to create it: a loser reads the winner's row.
        """
        for _ in range(3):
            org = await self._find_org(ref)
            if org is not None:
                return org
            try:
                org, _ = await self._insert_org(ref)
            except IntegrityError:
                log.debug("lost the race to create organization %s; reading the winner's", ref)
                continue
            return org
        raise RuntimeError(f"could not create or find organization {ref!r}")

    async def _find_org(self, ref: str) -> Organization | None:
        async with self._sessions() as session:
            return await find_org(session, ref)

    async def _insert_org(self, name: str) -> tuple[Organization, Project]:
        now = self._clock()
        org = Organization(id=uuid.uuid4().hex, name=name, created_at=now)
        project = new_project(org.id, DEFAULT_PROJECT, now, is_default=True)
        # One transaction: an organization never exists without its default project.
        async with self._sessions.begin() as session:
            session.add(org)
            await session.flush()
            session.add(project)
        log.info("created organization %s (%s)", name, org.id)
        return org, project

    async def list_orgs(self) -> list[OrgInfo]:
        """Every organization, oldest first."""
        stmt = (
            select(Organization, Project.id)
            .outerjoin(
                Project, and_(Project.org_id == Organization.id, Project.is_default.is_(True))
            )
            .order_by(Organization.created_at, Organization.id)
        )
        async with self._sessions() as session:
            rows = (await session.execute(stmt)).all()
        return [OrgInfo(o.id, o.name, o.created_at, pid or "") for o, pid in rows]

    async def create_project(self, org_ref: str, name: str) -> ProjectInfo:
        """A new project in an existing organization (by name or id)."""
        name = check_name(name, "name")
        try:
            async with self._sessions.begin() as session:
                org = await get_org(session, org_ref)
                project = new_project(org.id, name, self._clock())
                session.add(project)
        except IntegrityError:
            raise AlreadyExists(
                f"organization {org_ref!r} already has a project {name!r}",
                code="project_exists",
                param="name",
            ) from None
        log.info("created project %s (%s) in organization %s", name, project.id, org.id)
        return project_info(project, org)

    async def list_projects(self, org_ref: str | None = None) -> list[ProjectInfo]:
        """Projects oldest first; one organization's (by name or id) when `org_ref` is set."""
        stmt = (
            select(Project, Organization)
            .join(Organization, Organization.id == Project.org_id)
            .order_by(Project.created_at, Project.id)
        )
        if org_ref:
            stmt = stmt.where(or_(Organization.id == org_ref, Organization.name == org_ref))
        async with self._sessions() as session:
            rows = (await session.execute(stmt)).all()
        return [project_info(p, o) for p, o in rows]
