"""a job's latency target may be left to the service: null until its profile stage sets it

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("latency_target_ms", existing_type=sa.Float(), nullable=True)


def downgrade() -> None:
    # A job still waiting for its profile stage has no target yet: it gets 0, which no search accepts.
    op.execute("UPDATE jobs SET latency_target_ms = 0 WHERE latency_target_ms IS NULL")
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("latency_target_ms", existing_type=sa.Float(), nullable=False)
