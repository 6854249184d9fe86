"""Trials per state and best trial of each study, kept by triggers (lrtune/store/stats.py)

The triggers themselves are installed on Optuna's tables once those exist (lrtune migrates
before Optuna creates its tables on a new database): ``Store`` does it at start-up.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "lrtune_trial_counts",
        sa.Column("optuna_study_id", sa.Integer, primary_key=True),
        sa.Column("state", sa.String(16), primary_key=True),
        sa.Column("n", sa.Integer, nullable=False),
    )
    op.create_table(
        "lrtune_study_best",
        sa.Column("optuna_study_id", sa.Integer, primary_key=True),
        sa.Column("trial_id", sa.Integer, nullable=True),
        sa.Column("value", sa.Float, nullable=True),
        sa.Column("value_type", sa.String(16), nullable=True),
    )


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        names = [r[0] for r in bind.execute(sa.text(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'lrtune_%'"))]
        for name in names:
            op.execute(f"DROP TRIGGER {name}")
    else:
        for table, trigger in (("trials", "trials"), ("trial_values", "value"),
                               ("studies", "study_delete")):
            op.execute(f"DROP TRIGGER IF EXISTS lrtune_v1_{trigger} ON {table}")
        for function in ("count_trials()", "value()", "study_delete()",
                         "consider_best(integer)"):
            op.execute(f"DROP FUNCTION IF EXISTS lrtune_v1_{function}")
    op.drop_table("lrtune_study_best")
    op.drop_table("lrtune_trial_counts")
