"""Alembic environment for auth: migrates over the connection `migrate()` passes in."""

from services.auth.models import metadata
from services.common.db import run_migrations_online

run_migrations_online(metadata)
