"""Recommender checkpoints: each VerticalPodAutoscaler container's usage history (VPA's
VerticalPodAutoscalerCheckpoint), so recommendations survive a restart of serve.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "recommender_checkpoints",
        sa.Column("namespace", sa.String(), nullable=False),
        sa.Column("autoscaler", sa.String(), nullable=False),
        sa.Column("container", sa.String(), nullable=False),
        sa.Column("value", sa.JSON(), nullable=False),
        sa.Column("saved_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("namespace", "autoscaler", "container"),
    )


def downgrade() -> None:
    op.drop_table("recommender_checkpoints")
