"""Alembic environment for metering: migrates over the connection `migrate()` passes in."""

from services.common.db import run_migrations_online
from services.metering.models import metadata

run_migrations_online(metadata)
