"""ServiceAccount identities: each account (a ServiceAccount in Git, and the implicit `default`
of each namespace) holds a Unix uid, also its gid, that its pods run as on every node; stable
while the account exists or a recorded pod still runs as it.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "service_account_ids",
        sa.Column("uid", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("namespace", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("allocated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("uid"),
        sa.UniqueConstraint("namespace", "name", name="uq_service_account_ids_account"),
    )


def downgrade() -> None:
    op.drop_table("service_account_ids")
