"""Who is calling: named principals own studies, tokens (stored hashed) act for a principal,
and a dashboard login is a session of one token.

A principal's ``public_id`` is random, so the owner id shown to readers says nothing about any
token. Tokens given in ``LRTUNE_API_TOKENS`` get a row (``source = 'env'``) and a principal of
their own the first time they are seen, so they are listed beside the others; they stay valid
only while the setting lists them, and cannot be revoked from the CLI.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from lrtune.errors import Conflict, NotFound
from lrtune.store.db import Database, aware, now
from lrtune.tables import principals, sessions, studies, tokens

TABLE, ENV = "table", "env"
OWNER, WORKER = "owner", "worker"  # roles: a worker token claims and reports trials, only


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _hashes(listed: str) -> set[str]:
    return {hash_token(t.strip()) for t in listed.split(",") if t.strip()}


@dataclass(frozen=True)
class Principal:
    """The caller: ``public_id`` owns studies; ``token_id`` is the token it came with;
    ``role``: what the token may do (``owner``, or ``worker``: claim and report only)."""

    id: int
    name: str
    public_id: str
    token_id: int
    role: str = OWNER

    @property
    def is_worker(self) -> bool:
        return self.role == WORKER


@dataclass(frozen=True)
class TokenRow:
    id: int
    principal: str
    source: str
    created_at: datetime
    revoked_at: datetime | None
    role: str = OWNER


class Tokens:
    def __init__(self, db: Database, env_tokens: str, env_worker_tokens: str = "") -> None:
        self.db = db
        self.env_workers = _hashes(env_worker_tokens)
        self.env = _hashes(env_tokens) | self.env_workers

    def create(self, name: str, role: str = OWNER) -> str:
        """A new token for the principal ``name`` (created if new: a token made with an
        existing principal's name joins it, which is how a token is rotated)."""
        if role not in (OWNER, WORKER):
            raise ValueError(f"role must be {OWNER!r} or {WORKER!r}, got {role=}")
        token = "lrt_" + secrets.token_urlsafe(32)
        with self.db.transaction() as conn:
            principal_id = self._principal(conn, name)
            conn.execute(tokens.insert().values(name=name, token_hash=hash_token(token),
                                                created_at=now(), principal_id=principal_id,
                                                source=TABLE, role=role))
        return token

    @staticmethod
    def _principal(conn: sa.Connection, name: str) -> int:
        found = conn.execute(sa.select(principals.c.id).where(principals.c.name == name)
                             ).scalar()
        if found is not None:
            return int(found)
        return int(conn.execute(principals.insert().values(
            name=name, public_id="p_" + secrets.token_hex(8), created_at=now())
            .returning(principals.c.id)).scalar_one())

    def _acting(self, conn: sa.Connection, query: sa.Select[Any]) -> Principal | None:
        """The principal of the one token row ``query`` finds, if that token is valid: not
        revoked, and an ``env`` token only while the setting lists it."""
        row = conn.execute(query.add_columns(
            tokens.c.id, tokens.c.token_hash, tokens.c.source, tokens.c.revoked_at,
            tokens.c.role, principals.c.id.label("principal_id"), principals.c.name,
            principals.c.public_id)
            .join(principals, principals.c.id == tokens.c.principal_id)).first()
        if row is None or row.revoked_at is not None or (
                row.source == ENV and row.token_hash not in self.env):
            return None
        role = (WORKER if row.token_hash in self.env_workers else OWNER) \
            if row.source == ENV else row.role
        return Principal(row.principal_id, row.name, row.public_id, row.id, role)

    def principal(self, token: str) -> Principal | None:
        """The principal a valid token acts for, or None."""
        digest = hash_token(token)
        with self.db.read() as conn:  # asked on every request: one round trip when valid
            found = self._acting(conn, sa.select(tokens.c.name).where(
                tokens.c.token_hash == digest))
            known = found is not None or conn.execute(sa.select(tokens.c.id).where(
                tokens.c.token_hash == digest)).first() is not None
        if found is not None or digest not in self.env:
            return found
        if known:  # revoked, or first seen by another request between the two reads
            return self._by_hash(digest)
        return self._first_sight(digest)

    def _by_hash(self, digest: str) -> Principal | None:
        with self.db.read() as conn:
            return self._acting(conn, sa.select(tokens.c.name).where(
                tokens.c.token_hash == digest))

    def _first_sight(self, digest: str) -> Principal | None:
        """An ``LRTUNE_API_TOKENS`` token seen for the first time: its row and principal, and
        the studies it owned under the old owner id (its hash prefix) re-owned."""
        for _ in range(8):
            try:
                self._insert_env_token(digest)
                break
            except sa.exc.IntegrityError:
                # Another request saw this token at the same moment (done), or another new
                # token took the same name (count again).
                with self.db.transaction() as conn:
                    if conn.execute(sa.select(tokens.c.id).where(
                            tokens.c.token_hash == digest)).first() is not None:
                        break
        return self._by_hash(digest)

    def _insert_env_token(self, digest: str) -> None:
        with self.db.transaction() as conn:
            n = conn.execute(sa.select(sa.func.count()).select_from(tokens).where(
                tokens.c.source == ENV)).scalar_one()
            name = f"env-{'worker' if digest in self.env_workers else 'token'}-{n + 1}"
            principal_id = int(conn.execute(principals.insert().values(  # its own, never shared
                name=name, public_id="p_" + secrets.token_hex(8), created_at=now())
                .returning(principals.c.id)).scalar_one())
            conn.execute(tokens.insert().values(
                name=name, token_hash=digest, created_at=now(), source=ENV,
                principal_id=principal_id,
                role=WORKER if digest in self.env_workers else OWNER))
            public_id = conn.execute(sa.select(principals.c.public_id).where(
                principals.c.id == principal_id)).scalar_one()
            conn.execute(studies.update().where(studies.c.owner == digest[:16])
                         .values(owner=public_id))

    def owner(self, token: str) -> str | None:
        """The owner id (principal's public id) of a valid token, or None."""
        principal = self.principal(token)
        return principal.public_id if principal is not None else None

    def list(self) -> list[TokenRow]:
        with self.db.transaction() as conn:
            rows = conn.execute(
                sa.select(tokens.c.id, principals.c.name, tokens.c.source, tokens.c.created_at,
                          tokens.c.revoked_at, tokens.c.role)
                .join(principals, principals.c.id == tokens.c.principal_id)
                .order_by(tokens.c.id)).all()
        listed = []
        for token_id, name, source, created, revoked, role in rows:
            created_at = aware(created)
            assert created_at is not None
            listed.append(TokenRow(token_id, name, source, created_at, aware(revoked), role))
        return listed

    def revoke(self, token_id: int) -> None:
        """Revoke a table token (and its dashboard sessions); ``env`` tokens are removed from
        the setting instead."""
        with self.db.transaction() as conn:
            row = conn.execute(sa.select(tokens.c.source, tokens.c.revoked_at).where(
                tokens.c.id == token_id)).first()
            if row is None:
                raise NotFound(f"no token {token_id}", "id")
            if row.source == ENV:
                raise Conflict(f"token {token_id} comes from LRTUNE_API_TOKENS: remove it "
                               "there to revoke it", "id")
            if row.revoked_at is None:
                conn.execute(tokens.update().where(tokens.c.id == token_id)
                             .values(revoked_at=now()))
            conn.execute(sessions.delete().where(sessions.c.token_id == token_id))

    # -- dashboard logins --------------------------------------------------------------------
    def open_session(self, principal: Principal, hours: float) -> tuple[str, datetime]:
        """A new login for the token ``principal`` came with: the cookie value (stored
        hashed) and when it expires."""
        value = secrets.token_urlsafe(32)
        expires = now() + timedelta(hours=hours)
        with self.db.transaction() as conn:
            conn.execute(sessions.delete().where(sessions.c.expires_at < now()))
            conn.execute(sessions.insert().values(session_hash=hash_token(value),
                                                  token_id=principal.token_id,
                                                  created_at=now(), expires_at=expires))
        return value, expires

    def session_principal(self, value: str) -> Principal | None:
        """The principal of a live session whose token is still valid, or None."""
        with self.db.transaction() as conn:
            return self._acting(conn, sa.select(sessions.c.id).join(
                tokens, tokens.c.id == sessions.c.token_id).where(
                sessions.c.session_hash == hash_token(value), sessions.c.expires_at > now()))

    def close_session(self, value: str) -> None:
        with self.db.transaction() as conn:
            conn.execute(sessions.delete().where(sessions.c.session_hash == hash_token(value)))
