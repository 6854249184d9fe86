"""Study ids are never reused on SQLite (AUTOINCREMENT), as on PostgreSQL

Workers cache a study's Optuna objects by its id; without AUTOINCREMENT, SQLite gives a
deleted study's id to the next one created.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return  # PostgreSQL sequences never hand an id out twice
    with op.batch_alter_table("lrtune_studies", recreate="always",
                              table_kwargs={"sqlite_autoincrement": True}):
        pass


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table("lrtune_studies", recreate="always",
                              table_kwargs={"sqlite_autoincrement": False}):
        pass
