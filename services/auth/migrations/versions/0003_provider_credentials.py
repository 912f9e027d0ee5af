"""Provider credentials of bring-your-own-key models, AES-256-GCM encrypted.

Revision ID: 0003
Revises: 0002
Create Date: 2025-02-01
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
        "provider_credentials",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("org_id", sa.String(32), nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("nonce", sa.LargeBinary(), nullable=False),
        sa.Column("key_version", sa.String(16), nullable=False),
        sa.Column("fingerprint", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_provider_credentials"),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organizations.id"], name="fk_provider_credentials_org_id_organizations"
        ),
        sa.UniqueConstraint("org_id", "name", name="uq_provider_credentials_org_id_name"),
    )
    op.create_index("ix_provider_credentials_org_id", "provider_credentials", ["org_id"])


def downgrade() -> None:
    op.drop_index("ix_provider_credentials_org_id", table_name="provider_credentials")
    op.drop_table("provider_credentials")
