"""devices are owned by their agents: the hash of each device's agent token

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Devices registered before this revision have no token: the next
    # registration of each claims it (automl_server.devices.ownership).
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("agent_token_hash", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("agent_token_hash")
