"""Alembic migrations of the metering schema (version table `alembic_version_metering`)."""
