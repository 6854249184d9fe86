"""LR range test result per study (space.lr "auto")

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("lrtune_studies") as batch:
        batch.add_column(sa.Column("lr_range", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("lrtune_studies") as batch:
        batch.drop_column("lr_range")
