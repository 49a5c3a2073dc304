"""Lease terms: each leadership term has a number, so writes and node syncs can be fenced;
the lease's epoch names the store it lives in (terms of different stores do not compare).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("leases") as batch:
        batch.add_column(sa.Column("term", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("epoch", sa.String(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("leases") as batch:
        batch.drop_column("epoch")
        batch.drop_column("term")
