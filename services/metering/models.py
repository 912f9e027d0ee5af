"""Metering's tables: plans and policies, budget counters, reservations, the usage ledger and the
stored responses of the Responses API.

Records carry the public key id, never the key. Metering owns its own `MetaData` and migration
history, so it can share a database with auth or live apart from it.
"""

from __future__ import annotations

from datetime import datetime
from typing import cast

from sqlalchemy import BigInteger, Float, Index, Integer, MetaData, String, Table, Text, text
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


class PlanRow(Base):
    """A named plan: a monthly token quota and ceilings over an organization. 0 = no limit."""

    __tablename__ = "plans"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    monthly_tokens: Mapped[int] = mapped_column(BigInteger)
    rpm: Mapped[int] = mapped_column(BigInteger)
    tpm: Mapped[int] = mapped_column(BigInteger)
    max_concurrent: Mapped[int] = mapped_column(BigInteger)
    max_context: Mapped[int] = mapped_column(BigInteger)


class PolicyRow(Base):
    """An organization's or a project's plan, limits and token budget."""

    __tablename__ = "policies"

    scope: Mapped[str] = mapped_column(String(16), primary_key=True)  # "org" or "project"
    scope_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    plan: Mapped[str | None] = mapped_column(String(64), nullable=True)
    rpm: Mapped[int] = mapped_column(BigInteger)
    tpm: Mapped[int] = mapped_column(BigInteger)
    max_concurrent: Mapped[int] = mapped_column(BigInteger)
    budget_tokens: Mapped[int] = mapped_column(BigInteger)
    budget_period: Mapped[str] = mapped_column(String(16))


class BudgetCounterRow(Base):
    """Tokens used and held against one budget in one period, changed by conditional UPDATEs."""

    __tablename__ = "budget_counters"

    scope: Mapped[str] = mapped_column(String(16), primary_key=True)  # key/project/org/plan
    scope_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    period: Mapped[str] = mapped_column(String(16), primary_key=True)  # day/month/none
    period_start_ms: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    limit_tokens: Mapped[int] = mapped_column(BigInteger)  # the limit last admitted against
    used_tokens: Mapped[int] = mapped_column(BigInteger)
    reserved_tokens: Mapped[int] = mapped_column(BigInteger)


class ReservationRow(Base):
    """Tokens held for an admitted request until it settles or expires."""

    __tablename__ = "reservations"
    __table_args__ = (
        # Only open reservations are swept or recounted on start; a partial index stays small.
        Index(
            "ix_reservations_open_expires_at",
            "expires_at",
            postgresql_where=text("settled_at IS NULL"),
            sqlite_where=text("settled_at IS NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # "res_" + 24 hex
    org_id: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(200))
    endpoint: Mapped[str] = mapped_column(String(100))
    request_id: Mapped[str] = mapped_column(String(100))
    upper_bound_tokens: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Set once, when the reservation is closed by its settle or by expiry.
    settled_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    project_id: Mapped[str] = mapped_column(String(64), server_default="")
    client_ip: Mapped[str] = mapped_column(String(64), server_default="")
    provider: Mapped[str] = mapped_column(String(32), server_default="")
    # JSON list of [scope, scope_id, period, period_start_ms, tokens]: the exact counters held,
    # so a settle after the period rolled over still releases what was reserved.
    holds: Mapped[str] = mapped_column(Text, server_default="[]")
    reserved_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class UsageRow(Base):
    """One finished (or refused, or expired) request: what it used and how it went."""

    __tablename__ = "usage_records"
    __table_args__ = (
        Index("ix_usage_records_org_id_created_ms", "org_id", "created_ms"),
        Index("ix_usage_records_key_id_created_ms", "key_id", "created_ms"),
        Index("ix_usage_records_project_id_created_ms", "project_id", "created_ms"),
        Index("ix_usage_records_model_created_ms", "model", "created_ms"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # "usage_" + 24 hex
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Milliseconds since the epoch: the sort key, identical on every dialect.
    created_ms: Mapped[int] = mapped_column(BigInteger, index=True)
    request_id: Mapped[str] = mapped_column(String(100))
    # Unique, so settling one reservation twice cannot write two records. NULL for requests
    # that never got a reservation (e.g. refused at admission) and for expiry records (so a
    # late settle can still record its usage); NULLs do not collide.
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
    project_id: Mapped[str] = mapped_column(String(64), server_default="")
    client_ip: Mapped[str] = mapped_column(String(64), server_default="")
    provider: Mapped[str] = mapped_column(String(32), server_default="")


class StoredResponseRow(Base):
    """A Responses API response kept for its organization until `expires_ms` (see
    `services.metering.responses`); the JSON bodies are the edge's, opaque here."""

    __tablename__ = "stored_responses"
    __table_args__ = (Index("ix_stored_responses_expires_ms", "expires_ms"),)

    org_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    response_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    project_id: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(200))
    created_ms: Mapped[int] = mapped_column(BigInteger)
    expires_ms: Mapped[int] = mapped_column(BigInteger)
    response_json: Mapped[str] = mapped_column(Text)
    input_items_json: Mapped[str] = mapped_column(Text)
    conversation_json: Mapped[str] = mapped_column(Text)


metadata = Base.metadata

# The tables for Core statements (the hot paths use Core, not ORM sessions).
plans = cast(Table, PlanRow.__table__)
policies = cast(Table, PolicyRow.__table__)
budget_counters = cast(Table, BudgetCounterRow.__table__)
reservations = cast(Table, ReservationRow.__table__)
usage_records = cast(Table, UsageRow.__table__)
stored_responses = cast(Table, StoredResponseRow.__table__)
