"""push-button jobs: stage leases, webhooks, re-runs and comparisons

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "comparisons",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("dataset_name", sa.String(length=200), nullable=False),
        sa.Column("targets", sa.JSON(), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("cells", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_comparisons")),
    )
    op.create_index("ix_comparisons_created_at_id", "comparisons", ["created_at", "id"], unique=False)
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("lease_owner", sa.String(length=100), nullable=True))
        batch.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("recoveries", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("webhook_url", sa.String(length=2000), nullable=True))
        batch.add_column(sa.Column("webhook_secret", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("comparison_id", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("rerun_of", sa.String(length=32), nullable=True))
        batch.create_index(batch.f("ix_jobs_comparison_id"), ["comparison_id"], unique=False)
        batch.create_foreign_key(batch.f("fk_jobs_comparison_id_comparisons"), "comparisons",
                                 ["comparison_id"], ["id"], ondelete="SET NULL")


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint(batch.f("fk_jobs_comparison_id_comparisons"), type_="foreignkey")
        batch.drop_index(batch.f("ix_jobs_comparison_id"))
        for column in ("rerun_of", "comparison_id", "webhook_secret", "webhook_url", "recoveries",
                       "lease_until", "lease_owner"):
            batch.drop_column(column)
    op.drop_index("ix_comparisons_created_at_id", table_name="comparisons")
    op.drop_table("comparisons")
