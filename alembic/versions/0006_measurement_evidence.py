"""latency measurements keep their evidence: reliable or not, and why

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03

Op measurements already kept their method (evidence included, as JSON); they
gain ``reliable`` and ``unreliable_reason``. Whole-network measurements gain
the same, plus their coefficient of variation and their method (spread,
yardstick drift, load, CPU share, attempts). Rows measured before keep NULL:
not assessed, used as before.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("latency_measurements") as batch:
        batch.add_column(sa.Column("reliable", sa.Boolean(), nullable=True))
        batch.add_column(sa.Column("unreliable_reason", sa.Text(), nullable=True))
    with op.batch_alter_table("latency_network_measurements") as batch:
        batch.add_column(sa.Column("cv", sa.Float(), nullable=True))
        batch.add_column(sa.Column("method", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("reliable", sa.Boolean(), nullable=True))
        batch.add_column(sa.Column("unreliable_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("latency_network_measurements") as batch:
        for name in ("unreliable_reason", "reliable", "method", "cv"):
            batch.drop_column(name)
    with op.batch_alter_table("latency_measurements") as batch:
        for name in ("unreliable_reason", "reliable"):
            batch.drop_column(name)
