"""Principals own studies; tokens belong to a principal; dashboard sessions

Before, a study's owner was the first 16 hex digits of its token's SHA-256: readable by anyone
and tied to one token. Each existing token gets a principal of its own (named after the
token) whose opaque public id replaces that hash prefix on the studies it owned. Tokens given
in LRTUNE_API_TOKENS are not in the database: lrtune migrates their studies the first time it
sees such a token (lrtune/store/tokens.py).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

import secrets
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "lrtune_principals",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("public_id", sa.String(40), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    with op.batch_alter_table("lrtune_tokens") as batch:
        batch.add_column(sa.Column("principal_id", sa.Integer, nullable=True))
        batch.add_column(sa.Column("source", sa.String(10), nullable=False,
                                   server_default="table"))
        batch.create_foreign_key("fk_lrtune_tokens_principal", "lrtune_principals",
                                 ["principal_id"], ["id"])
    op.create_table(
        "lrtune_sessions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("session_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("token_id", sa.Integer, sa.ForeignKey("lrtune_tokens.id"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    bind = op.get_bind()
    principals = sa.table("lrtune_principals", sa.column("id", sa.Integer),
                          sa.column("name", sa.String), sa.column("public_id", sa.String),
                          sa.column("created_at", sa.DateTime(timezone=True)))
    tokens = sa.table("lrtune_tokens", sa.column("id", sa.Integer), sa.column("name", sa.String),
                      sa.column("token_hash", sa.String), sa.column("principal_id", sa.Integer))
    studies = sa.table("lrtune_studies", sa.column("owner", sa.String))
    stamp = datetime.now(UTC)
    for token_id, name, token_hash in bind.execute(
            sa.select(tokens.c.id, tokens.c.name, tokens.c.token_hash).order_by(tokens.c.id)):
        public_id = "p_" + secrets.token_hex(8)
        principal_id = bind.execute(principals.insert().values(
            name=f"{name}-{token_id}", public_id=public_id, created_at=stamp)
            .returning(principals.c.id)).scalar_one()
        bind.execute(tokens.update().where(tokens.c.id == token_id)
                     .values(principal_id=principal_id))
        bind.execute(studies.update().where(studies.c.owner == token_hash[:16])
                     .values(owner=public_id))


def downgrade() -> None:
    op.drop_table("lrtune_sessions")
    with op.batch_alter_table("lrtune_tokens") as batch:
        batch.drop_constraint("fk_lrtune_tokens_principal", type_="foreignkey")
        batch.drop_column("source")
        batch.drop_column("principal_id")
    op.drop_table("lrtune_principals")
