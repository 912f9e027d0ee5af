"""Alembic migrations of the auth schema (version table `alembic_version_auth`)."""
