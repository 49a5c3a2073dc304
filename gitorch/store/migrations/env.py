"""Alembic environment: `gitorch.store.migrate` runs it with an open connection.

To write a new migration from a repository checkout, change the tables in gitorch/store.py, then
`alembic -c gitorch/store/migrations/alembic.ini revision --autogenerate -m "what changed"`, and
review the generated file by hand.
"""

from __future__ import annotations

from typing import Literal

from alembic import context
from sqlalchemy import Connection, create_engine

from gitorch.store.database import UTCDateTime, metadata


def render_item(kind: str, obj: object, autogen_context: object) -> str | Literal[False]:
    """Spell gitorch's column types as plain SQLAlchemy ones, so a migration never imports us."""
    if kind == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    if kind == "type" and type(obj).__name__ == "AutoString":  # sqlmodel's str
        length = getattr(obj, "length", None)
        return f"sa.String(length={length})" if length else "sa.String()"
    return False


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=True,
        render_item=render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


given = context.config.attributes.get("connection")
if given is not None:
    run(given)
else:  # the alembic command line, from alembic.ini
    engine = create_engine(context.config.get_main_option("sqlalchemy.url", ""))
    with engine.connect() as connection:
        run(connection)
    engine.dispose()
