"""Alembic migrations of the state store (run by `gitorch.store.migrate`)."""
