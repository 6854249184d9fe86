"""lrtune's own tables (prefixed ``lrtune_``; Optuna owns the rest of the database)."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

studies = Table(
    "lrtune_studies", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("task", String(100), nullable=False),
    Column("spec", JSON, nullable=False),
    Column("status", String(20), nullable=False),
    Column("owner", String(64), nullable=False),  # the principal's public_id
    Column("n_trials", Integer, nullable=False),
    Column("reason", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("lr_range", JSON, nullable=True),  # the LR range test's result for lr "auto"
    Index("ix_lrtune_studies_status", "status"),
    sqlite_autoincrement=True,  # ids never reused: workers cache studies by id
)

# Who owns studies: a named principal with an opaque public id; its tokens come and go.
principals = Table(
    "lrtune_principals", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("public_id", String(40), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

tokens = Table(
    "lrtune_tokens", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(100), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    Column("principal_id", Integer, ForeignKey("lrtune_principals.id"), nullable=True),
    Column("source", String(10), nullable=False, server_default="table"),  # table | env
    Column("role", String(10), nullable=False, server_default="owner"),  # owner | worker
)

# The trials one claim over HTTP took, for the token that took them (service/routes/leases.py).
leases = Table(
    "lrtune_leases", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("token_id", Integer, ForeignKey("lrtune_tokens.id"), nullable=False),
    Column("study_id", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_lrtune_leases_study", "study_id"),
    sqlite_autoincrement=True,
)

lease_trials = Table(
    "lrtune_lease_trials", metadata,
    Column("trial_id", Integer, primary_key=True, autoincrement=False),  # Optuna's trial id
    Column("lease_id", Integer, ForeignKey("lrtune_leases.id", ondelete="CASCADE"),
           nullable=False),
    Column("number", Integer, nullable=False),
    Index("ix_lrtune_lease_trials_lease", "lease_id"),
)

# Dashboard logins: a browser's cookie names a session of one token (hashed here).
sessions = Table(
    "lrtune_sessions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("session_hash", String(64), nullable=False, unique=True),
    Column("token_id", Integer, ForeignKey("lrtune_tokens.id"), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)

# Kept by triggers on Optuna's tables (lrtune/store/stats.py), keyed by Optuna's study id.
trial_counts = Table(
    "lrtune_trial_counts", metadata,
    Column("optuna_study_id", Integer, primary_key=True),
    Column("state", String(16), primary_key=True),
    Column("n", Integer, nullable=False),
)

study_best = Table(
    "lrtune_study_best", metadata,
    Column("optuna_study_id", Integer, primary_key=True),
    Column("trial_id", Integer, nullable=True),
    Column("value", Float, nullable=True),
    Column("value_type", String(16), nullable=True),
)
