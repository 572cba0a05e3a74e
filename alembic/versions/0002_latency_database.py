"""latency database

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22

The latency database: hardware targets, operators, per-op measurements and
whole-network measurements (for the predictor's calibration).
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa



revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('latency_ops',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('key', sa.String(length=300), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_latency_ops')),
    sa.UniqueConstraint('key', name=op.f('uq_latency_ops_key'))
    )
    op.create_table('latency_targets',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('device_name', sa.String(length=100), nullable=False),
    sa.Column('backend', sa.String(length=50), nullable=False),
    sa.Column('backend_version', sa.String(length=50), nullable=False),
    sa.Column('threads', sa.Integer(), nullable=False),
    sa.Column('dtype', sa.String(length=20), nullable=False),
    sa.Column('batch', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('batch >= 1', name=op.f('ck_latency_targets_batch_positive')),
    sa.CheckConstraint('threads >= 1', name=op.f('ck_latency_targets_threads_positive')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_latency_targets')),
    sa.UniqueConstraint('device_name', 'backend', 'backend_version', 'threads', 'dtype', 'batch', name=op.f('uq_latency_targets_device_name'))
    )
    op.create_table('latency_measurements',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('target_id', sa.Integer(), nullable=False),
    sa.Column('op_id', sa.Integer(), nullable=False),
    sa.Column('samples', sa.Integer(), nullable=True),
    sa.Column('warmup', sa.Integer(), nullable=True),
    sa.Column('median_ms', sa.Float(), nullable=True),
    sa.Column('mean_ms', sa.Float(), nullable=True),
    sa.Column('std_ms', sa.Float(), nullable=True),
    sa.Column('p90_ms', sa.Float(), nullable=True),
    sa.Column('min_ms', sa.Float(), nullable=True),
    sa.Column('cv', sa.Float(), nullable=True),
    sa.Column('measured_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('agent_version', sa.String(length=50), nullable=False),
    sa.Column('temperature_c', sa.Float(), nullable=True),
    sa.Column('method', sa.JSON(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.CheckConstraint('(error IS NULL AND median_ms IS NOT NULL) OR (error IS NOT NULL AND median_ms IS NULL)', name=op.f('ck_latency_measurements_result_or_error')),
    sa.ForeignKeyConstraint(['op_id'], ['latency_ops.id'], name=op.f('fk_latency_measurements_op_id_latency_ops'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['target_id'], ['latency_targets.id'], name=op.f('fk_latency_measurements_target_id_latency_targets'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_latency_measurements'))
    )
    with op.batch_alter_table('latency_measurements', schema=None) as batch_op:
        batch_op.create_index('ix_latency_measurements_target_id_op_id', ['target_id', 'op_id'], unique=False)

    op.create_table('latency_network_measurements',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('target_id', sa.Integer(), nullable=False),
    sa.Column('arch', sa.JSON(), nullable=False),
    sa.Column('measured_ms', sa.Float(), nullable=False),
    sa.Column('lut_sum_ms', sa.Float(), nullable=False),
    sa.Column('n_ops', sa.Integer(), nullable=False),
    sa.Column('measured_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('agent_version', sa.String(length=50), nullable=False),
    sa.ForeignKeyConstraint(['target_id'], ['latency_targets.id'], name=op.f('fk_latency_network_measurements_target_id_latency_targets'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_latency_network_measurements'))
    )
    with op.batch_alter_table('latency_network_measurements', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_latency_network_measurements_target_id'), ['target_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('latency_network_measurements', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_latency_network_measurements_target_id'))

    op.drop_table('latency_network_measurements')
    with op.batch_alter_table('latency_measurements', schema=None) as batch_op:
        batch_op.drop_index('ix_latency_measurements_target_id_op_id')

    op.drop_table('latency_measurements')
    op.drop_table('latency_targets')
    op.drop_table('latency_ops')
