"""API tokens: created at random, stored hashed; a valid token names its owner."""

from __future__ import annotations

import hashlib
import secrets

import sqlalchemy as sa

from lrtune.store.db import Database, now
from lrtune.tables import tokens


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Tokens:
    def __init__(self, db: Database, env_tokens: str) -> None:
        self.db = db
        self.env = [t.strip() for t in env_tokens.split(",") if t.strip()]

    def create(self, name: str) -> str:
        token = "lrt_" + secrets.token_urlsafe(32)
        with self.db.transaction() as conn:
            conn.execute(tokens.insert().values(name=name, token_hash=hash_token(token),
                                                created_at=now()))
        return token

    def owner(self, token: str) -> str | None:
        """The owner id of a valid token (its hash prefix), or None."""
        digest = hash_token(token)
        if any(secrets.compare_digest(digest, hash_token(t)) for t in self.env):
            return digest[:16]
        with self.db.transaction() as conn:
            row = conn.execute(sa.select(tokens.c.id).where(
                tokens.c.token_hash == digest, tokens.c.revoked_at.is_(None))).first()
        return digest[:16] if row is not None else None
