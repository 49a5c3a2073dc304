"""LoadBalancer addresses: each Service of type LoadBalancer holds one address of a Cluster
pool, and the node announcing it is recorded with it (so it stays put while it can).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "load_balancer_ips",
        sa.Column("ip", sa.String(length=45), nullable=False),
        sa.Column("namespace", sa.String(), nullable=False),
        sa.Column("service", sa.String(), nullable=False),
        sa.Column("node", sa.String(), nullable=True),
        sa.Column("allocated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("ip"),
        sa.UniqueConstraint("namespace", "service", name="uq_load_balancer_ips_service"),
    )


def downgrade() -> None:
    op.drop_table("load_balancer_ips")
