"""latency targets keep a pace: the yardstick time their latencies are given at

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("latency_targets") as batch:
        batch.add_column(sa.Column("pace_ms", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("latency_targets") as batch:
        batch.drop_column("pace_ms")
