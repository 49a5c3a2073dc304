"""Notification state: what notifications already announced, kept across restarts.

Revision ID: 0002
Revises: 0001

Types are spelled out (sa.String, sa.DateTime)
rather than taken from gitorch.store, so this file keeps meaning what it meant when released.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notification_state",
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("value", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )


def downgrade() -> None:
    op.drop_table("notification_state")
