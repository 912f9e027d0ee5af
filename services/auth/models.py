"""Auth's tables: organizations, their projects, API keys (stored as keyed hashes, never in clear)
and encrypted provider credentials.

Auth owns its own `MetaData` and migration history, so it can share a database with metering
or live apart from it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.common.sqltypes import UTCDateTime

# Named constraints, so that migrations on PostgreSQL and SQLite agree on names.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Organization(Base):
    __tablename__ = "organizations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # uuid4 hex
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Project(Base):
    """One application of an organization; every organization has one named "default"."""

    __tablename__ = "projects"
    __table_args__ = (UniqueConstraint("org_id", "name", name="uq_projects_org_id_name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # "proj_" + 16 hex
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    is_default: Mapped[bool] = mapped_column(Boolean(), default=False, server_default=false())


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # "key_" + 16 hex
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    # Hex HMAC-SHA-256 of the full secret; the lookup path of every request.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    fingerprint: Mapped[str] = mapped_column(String(32))  # e.g. "sk-sluice-...Ab3d"
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # JSON lists as text: read whole on every request, never queried by element.
    allowed_models: Mapped[str] = mapped_column(Text(), default="[]", server_default="[]")
    allowed_ips: Mapped[str] = mapped_column(Text(), default="[]", server_default="[]")
    # The key's own quota; 0 = no limit of that kind (enforced by metering).
    rpm: Mapped[int] = mapped_column(BigInteger(), default=0, server_default="0")
    tpm: Mapped[int] = mapped_column(BigInteger(), default=0, server_default="0")
    max_concurrent: Mapped[int] = mapped_column(BigInteger(), default=0, server_default="0")
    budget_tokens: Mapped[int] = mapped_column(BigInteger(), default=0, server_default="0")
    budget_period: Mapped[str] = mapped_column(String(8), default="none", server_default="none")
    # The secret a rotation replaced; it keeps working until previous_expires_at.
    previous_key_hash: Mapped[str | None] = mapped_column(
        String(64), unique=True, index=True, nullable=True
    )
    previous_fingerprint: Mapped[str | None] = mapped_column(String(32), nullable=True)
    previous_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ProviderCredential(Base):
    """An organization's key for an upstream provider, AES-256-GCM encrypted."""

    __tablename__ = "provider_credentials"
    __table_args__ = (
        UniqueConstraint("org_id", "name", name="uq_provider_credentials_org_id_name"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # "prov_" + 16 hex
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    provider: Mapped[str] = mapped_column(String(32))  # "openai" or "anthropic"
    name: Mapped[str] = mapped_column(String(200))
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary())  # includes the 16-byte GCM tag
    nonce: Mapped[bytes] = mapped_column(LargeBinary())  # 12 random bytes, one per encryption
    key_version: Mapped[str] = mapped_column(String(16))  # which data key sealed the row
    fingerprint: Mapped[str] = mapped_column(String(16))  # "..." + last 4 characters
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


metadata = Base.metadata
