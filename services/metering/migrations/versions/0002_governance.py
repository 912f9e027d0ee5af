"""Plans, policies and budget counters; reservations hold budgets and expire; richer records.

Revision ID: 0002
Revises: 0001
Create Date: 2025-02-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PLANS = [
    {"name": "free", "monthly_tokens": 1_000_000, "rpm": 60, "tpm": 100_000,
     "max_concurrent": 4, "max_context": 4096},
    {"name": "team", "monthly_tokens": 50_000_000, "rpm": 600, "tpm": 1_000_000,
     "max_concurrent": 32, "max_context": 8192},
    {"name": "business", "monthly_tokens": 500_000_000, "rpm": 3000, "tpm": 5_000_000,
     "max_concurrent": 128, "max_context": 0},
]  # fmt: skip


def upgrade() -> None:
    plans = op.create_table(
        "plans",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("monthly_tokens", sa.BigInteger(), nullable=False),
        sa.Column("rpm", sa.BigInteger(), nullable=False),
        sa.Column("tpm", sa.BigInteger(), nullable=False),
        sa.Column("max_concurrent", sa.BigInteger(), nullable=False),
        sa.Column("max_context", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_plans"),
    )
    op.bulk_insert(plans, PLANS)
    op.create_table(
        "policies",
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("scope_id", sa.String(64), nullable=False),
        sa.Column("plan", sa.String(64), nullable=True),
        sa.Column("rpm", sa.BigInteger(), nullable=False),
        sa.Column("tpm", sa.BigInteger(), nullable=False),
        sa.Column("max_concurrent", sa.BigInteger(), nullable=False),
        sa.Column("budget_tokens", sa.BigInteger(), nullable=False),
        sa.Column("budget_period", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("scope", "scope_id", name="pk_policies"),
    )
    op.create_table(
        "budget_counters",
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("scope_id", sa.String(64), nullable=False),
        sa.Column("period", sa.String(16), nullable=False),
        sa.Column("period_start_ms", sa.BigInteger(), nullable=False),
        sa.Column("limit_tokens", sa.BigInteger(), nullable=False),
        sa.Column("used_tokens", sa.BigInteger(), nullable=False),
        sa.Column("reserved_tokens", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "scope", "scope_id", "period", "period_start_ms", name="pk_budget_counters"
        ),
    )

    with op.batch_alter_table("reservations") as batch:
        batch.add_column(sa.Column("project_id", sa.String(64), nullable=False, server_default=""))
        batch.add_column(sa.Column("client_ip", sa.String(64), nullable=False, server_default=""))
        batch.add_column(sa.Column("provider", sa.String(32), nullable=False, server_default=""))
        batch.add_column(sa.Column("holds", sa.Text(), nullable=False, server_default="[]"))
        batch.add_column(
            sa.Column("reserved_tokens", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    # Reservations from before this revision hold no budget; an open one is from a request
    # that never settled, so it expires at once and the sweeper closes it.
    op.execute("UPDATE reservations SET expires_at = created_at")
    with op.batch_alter_table("reservations") as batch:
        batch.alter_column("expires_at", existing_type=sa.DateTime(timezone=True), nullable=False)
    op.create_index(
        "ix_reservations_open_expires_at",
        "reservations",
        ["expires_at"],
        postgresql_where=sa.text("settled_at IS NULL"),
        sqlite_where=sa.text("settled_at IS NULL"),
    )

    with op.batch_alter_table("usage_records") as batch:
        batch.add_column(sa.Column("project_id", sa.String(64), nullable=False, server_default=""))
        batch.add_column(sa.Column("client_ip", sa.String(64), nullable=False, server_default=""))
        batch.add_column(sa.Column("provider", sa.String(32), nullable=False, server_default=""))
    op.create_index(
        "ix_usage_records_project_id_created_ms", "usage_records", ["project_id", "created_ms"]
    )
    op.create_index("ix_usage_records_model_created_ms", "usage_records", ["model", "created_ms"])


def downgrade() -> None:
    op.drop_index("ix_usage_records_model_created_ms", table_name="usage_records")
    op.drop_index("ix_usage_records_project_id_created_ms", table_name="usage_records")
    with op.batch_alter_table("usage_records") as batch:
        batch.drop_column("provider")
        batch.drop_column("client_ip")
        batch.drop_column("project_id")
    op.drop_index("ix_reservations_open_expires_at", table_name="reservations")
    with op.batch_alter_table("reservations") as batch:
        batch.drop_column("expires_at")
        batch.drop_column("reserved_tokens")
        batch.drop_column("holds")
        batch.drop_column("provider")
        batch.drop_column("client_ip")
        batch.drop_column("project_id")
    op.drop_table("budget_counters")
    op.drop_table("policies")
    op.drop_table("plans")
