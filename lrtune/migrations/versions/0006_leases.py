"""Token roles and trial leases

A token is an owner's (creates and trains its studies) or a worker's (claims and reports any
non-external study's trials, nothing else). A lease holds the trials one claim over HTTP took,
for the token that took them: only that token reports and finishes them.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("lrtune_tokens") as batch:
        batch.add_column(sa.Column("role", sa.String(10), nullable=False,
                                   server_default="owner"))
    op.create_table(
        "lrtune_leases",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("token_id", sa.Integer, sa.ForeignKey("lrtune_tokens.id"), nullable=False),
        sa.Column("study_id", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_lrtune_leases_study", "lrtune_leases", ["study_id"])
    op.create_table(
        "lrtune_lease_trials",
        sa.Column("trial_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("lease_id", sa.Integer, sa.ForeignKey("lrtune_leases.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
    )
    op.create_index("ix_lrtune_lease_trials_lease", "lrtune_lease_trials", ["lease_id"])


def downgrade() -> None:
    op.drop_table("lrtune_lease_trials")
    op.drop_table("lrtune_leases")
    with op.batch_alter_table("lrtune_tokens") as batch:
        batch.drop_column("role")
