"""Projects, and per-key policy: project, allowed models and IPs, expiry, quota, rotation.

Every existing organization gets its default project and every existing key is assigned to it,
so keys issued before this revision keep authenticating unchanged.

Revision ID: 0002
Revises: 0001
Create Date: 2025-02-01
"""

import secrets
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("org_id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("is_default", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_projects"),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organizations.id"], name="fk_projects_org_id_organizations"
        ),
        sa.UniqueConstraint("org_id", "name", name="uq_projects_org_id_name"),
    )
    op.create_index("ix_projects_org_id", "projects", ["org_id"])

    # Data: a default project per existing organization. Ids are made here, in Python, because
    # PostgreSQL and SQLite share no random-hex SQL function.
    conn = op.get_bind()
    orgs = sa.table(
        "organizations",
        sa.column("id", sa.String()),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    projects = sa.table(
        "projects",
        sa.column("id", sa.String()),
        sa.column("org_id", sa.String()),
        sa.column("name", sa.String()),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("is_default", sa.Boolean()),
    )
    existing = conn.execute(sa.select(orgs.c.id, orgs.c.created_at)).all()
    if existing:
        conn.execute(
            projects.insert(),
            [
                {
                    "id": "proj_" + secrets.token_hex(8),
                    "org_id": org_id,
                    "name": "default",
                    "created_at": created_at,
                    "is_default": True,
                }
                for org_id, created_at in existing
            ],
        )

    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("project_id", sa.String(32), nullable=True))
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        for name in ("allowed_models", "allowed_ips"):
            batch.add_column(sa.Column(name, sa.Text(), server_default="[]", nullable=False))
        for name in ("rpm", "tpm", "max_concurrent", "budget_tokens"):
            batch.add_column(sa.Column(name, sa.BigInteger(), server_default="0", nullable=False))
        batch.add_column(
            sa.Column("budget_period", sa.String(8), server_default="none", nullable=False)
        )
        batch.add_column(sa.Column("previous_key_hash", sa.String(64), nullable=True))
        batch.add_column(sa.Column("previous_fingerprint", sa.String(32), nullable=True))
        batch.add_column(
            sa.Column("previous_expires_at", sa.DateTime(timezone=True), nullable=True)
        )

    api_keys = sa.table("api_keys", sa.column("org_id", sa.String()), sa.column("project_id"))
    default_project = (
        sa.select(projects.c.id)
        .where(projects.c.org_id == api_keys.c.org_id, projects.c.is_default.is_(sa.true()))
        .scalar_subquery()
    )
    conn.execute(api_keys.update().values(project_id=default_project))

    with op.batch_alter_table("api_keys") as batch:
        batch.alter_column("project_id", existing_type=sa.String(32), nullable=False)
        batch.create_foreign_key(
            "fk_api_keys_project_id_projects", "projects", ["project_id"], ["id"]
        )
        batch.create_index("ix_api_keys_project_id", ["project_id"])
        batch.create_index("ix_api_keys_previous_key_hash", ["previous_key_hash"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_index("ix_api_keys_previous_key_hash")
        batch.drop_index("ix_api_keys_project_id")
        batch.drop_constraint("fk_api_keys_project_id_projects", type_="foreignkey")
        for name in (
            "previous_expires_at",
            "previous_fingerprint",
            "previous_key_hash",
            "budget_period",
            "budget_tokens",
            "max_concurrent",
            "tpm",
            "rpm",
            "allowed_ips",
            "allowed_models",
            "expires_at",
            "project_id",
        ):
            batch.drop_column(name)
    op.drop_index("ix_projects_org_id", table_name="projects")
    op.drop_table("projects")
