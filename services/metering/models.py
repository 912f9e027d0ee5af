"""Metering's tables: reservations made at admission and the durable usage ledger.

Records carry the public key id, never the key. Metering owns its own `MetaData` and migration
history, so it can share a database with auth or live apart from it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Float, Index, Integer, MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.common.sqltypes import UTCDateTime

# Named constraints, so that migrations on PostgreSQL and SQLite agree on names.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class ReservationRow(Base):
    """Tokens held for an admitted request until it settles."""

    __tablename__ = "reservations"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # "res_" + 24 hex
    org_id: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(200))
    endpoint: Mapped[str] = mapped_column(String(100))
    request_id: Mapped[str] = mapped_column(String(100))
    upper_bound_tokens: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    settled_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class UsageRow(Base):
    """One finished request: what it used and how it went."""

    __tablename__ = "usage_records"
    __table_args__ = (
        Index("ix_usage_records_org_id_created_ms", "org_id", "created_ms"),
        Index("ix_usage_records_key_id_created_ms", "key_id", "created_ms"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # "usage_" + 24 hex
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Milliseconds since the epoch: the sort key, identical on every dialect.
    created_ms: Mapped[int] = mapped_column(BigInteger, index=True)
    request_id: Mapped[str] = mapped_column(String(100))
    # Unique, so settling one reservation twice cannot write two records. NULL for requests
    # that never got a reservation (e.g. refused at admission); NULLs do not collide.
    reservation_id: Mapped[str | None] = mapped_column(String(40), unique=True, nullable=True)
    org_id: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(200))
    model_digest: Mapped[str] = mapped_column(String(80))
    endpoint: Mapped[str] = mapped_column(String(100))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    latency_ms: Mapped[float] = mapped_column(Float)
    ttft_ms: Mapped[float] = mapped_column(Float)


metadata = Base.metadata
