"""Stored responses of the Responses API, per organization, with their expiry.

Revision ID: 0003
Revises: 0002
Create Date: 2025-04-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "stored_responses",
        sa.Column("org_id", sa.String(64), nullable=False),
        sa.Column("response_id", sa.String(100), nullable=False),
        sa.Column("project_id", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("expires_ms", sa.BigInteger(), nullable=False),
        sa.Column("response_json", sa.Text(), nullable=False),
        sa.Column("input_items_json", sa.Text(), nullable=False),
        sa.Column("conversation_json", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("org_id", "response_id", name="pk_stored_responses"),
    )
    op.create_index("ix_stored_responses_expires_ms", "stored_responses", ["expires_ms"])


def downgrade() -> None:
    op.drop_index("ix_stored_responses_expires_ms", table_name="stored_responses")
    op.drop_table("stored_responses")
