"""lrtune's own tables (prefixed ``lrtune_``; Optuna owns the rest of the database)."""

from __future__ import annotations

from sqlalchemy import JSON, Column, DateTime, Index, Integer, MetaData, String, Table, Text

metadata = MetaData()

studies = Table(
    "lrtune_studies", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("task", String(100), nullable=False),
    Column("spec", JSON, nullable=False),
    Column("status", String(20), nullable=False),
    Column("owner", String(64), nullable=False),
    Column("n_trials", Integer, nullable=False),
    Column("reason", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("lr_range", JSON, nullable=True),  # the LR range test's result for lr "auto"
    Index("ix_lrtune_studies_status", "status"),
    sqlite_autoincrement=True,  # ids never reused: workers cache studies by id
)

tokens = Table(
    "lrtune_tokens", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(100), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)
