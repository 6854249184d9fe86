"""The database: an engine per URL, Alembic migrations of lrtune's tables, the one
``transaction()`` every store module writes and reads through, and Optuna's storage on the same
URL. A database that is away surfaces as ``DatabaseUnavailable`` from either."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import inspect
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import optuna
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from lrtune.errors import DatabaseUnavailable

# Errors that mean "the database is not there right now", not "this statement is wrong".
UNAVAILABLE: tuple[type[Exception], ...] = (
    sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError,
    optuna.exceptions.StorageInternalError)
_MIGRATE_LOCK = threading.Lock()  # Alembic's command API keeps module globals
SCHEMA_LOCK = 0x6C72_7475_6E65  # pg_advisory_xact_lock key: "lrtune"
P = ParamSpec("P")
R = TypeVar("R")


def now() -> datetime:
    return datetime.now(UTC)


def utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; lrtune writes UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def aware(moment: datetime | None) -> datetime | None:
    return None if moment is None else utc(moment)


def sqlalchemy_url(url: str) -> str:
    """``postgresql://`` means psycopg 3 here (SQLAlchemy's default would be psycopg2)."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


def unavailable(error: Exception) -> DatabaseUnavailable:
    first = str(error).strip().splitlines()
    return DatabaseUnavailable(f"database unavailable: {first[0] if first else type(error)}")


@dataclass(frozen=True)
class Pool:
    """Database connections of one engine (PostgreSQL; SQLite keeps its own): ``size`` kept,
    ``overflow`` more when busy, ``timeout`` seconds to wait for one (then unavailable).

    psycopg prepares no statement on the server (``prepare_threshold=None``), so the same URL
    works through PgBouncer in transaction mode, where one client connection's transactions
    run on different server connections. lrtune keeps no other session state: its locks are
    row locks and ``pg_advisory_xact_lock``, held for one transaction, and it sets nothing
    with ``SET``. ``prepared=True`` keeps psycopg's default (prepare a query from its fifth
    run on a connection) for a direct connection to PostgreSQL."""

    size: int = 5
    overflow: int = 10
    timeout: float = 30.0
    prepared: bool = False

    def kwargs(self, url: str) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"pool_pre_ping": True, "pool_size": self.size,
                                  "max_overflow": self.overflow, "pool_timeout": self.timeout}
        if not self.prepared and sa.engine.make_url(url).get_driver_name() == "psycopg":
            kwargs["connect_args"] = {"prepare_threshold": None}
        return kwargs


def engine_for(url: str, pool: Pool | None = None) -> Engine:
    url = sqlalchemy_url(url)
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 60})

        @sa.event.listens_for(engine, "connect")
        def _wal(dbapi_conn: Any, _: Any) -> None:
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute("PRAGMA busy_timeout=60000")

        return engine
    return sa.create_engine(url, **(pool or Pool()).kwargs(url))


def open_pool(engine: Engine) -> None:
    """Open the pool's kept connections now (PostgreSQL): a server's connections are then a
    constant of its settings from its first request on, not a function of its load (with
    no overflow, exactly the pool size), and a database that refuses them fails the start."""
    if engine.dialect.name == "sqlite":
        return
    held = [engine.connect() for _ in range(engine.pool.size())]  # type: ignore[attr-defined]
    for conn in held:
        conn.close()


@contextlib.contextmanager
def autocommit(engine: Engine) -> Iterator[sa.Connection]:
    """A connection of ``engine`` in autocommit, for reads that need no transaction: each
    statement is one round trip to the database, without a BEGIN and a COMMIT around it."""
    try:
        with engine.connect() as conn:
            yield conn.execution_options(isolation_level="AUTOCOMMIT")
    except UNAVAILABLE as error:
        raise unavailable(error) from error


class Database:
    """One engine; ``transaction()`` commits or rolls back and turns a lost database into
    ``DatabaseUnavailable``."""

    def __init__(self, url: str, pool: Pool | None = None) -> None:
        self.url = sqlalchemy_url(url)
        self.engine = engine_for(self.url, pool)
        self.is_sqlite = self.engine.dialect.name == "sqlite"

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sa.Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except UNAVAILABLE as error:
            raise unavailable(error) from error

    def read(self) -> contextlib.AbstractContextManager[sa.Connection]:
        return autocommit(self.engine)

    def migrate(self, conn: sa.Connection | None) -> None:
        """Bring lrtune's tables to the latest revision, under ``schema_lock``: in the
        connection it yields (PostgreSQL), else in a transaction of its own (SQLite)."""
        if conn is not None:
            self._upgrade(conn)
            return
        with self.transaction() as own:
            self._upgrade(own)

    def _upgrade(self, conn: sa.Connection) -> None:
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(Path(__file__).parents[1] / "migrations"))
        cfg.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        with _MIGRATE_LOCK:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    @contextlib.contextmanager
    def schema_lock(self) -> Iterator[sa.Connection | None]:
        """Serialise creating and migrating the schema across processes (API replicas starting
        together on an empty database race in Optuna's ``CREATE TYPE``): a transaction-level
        advisory lock (it holds through PgBouncer) on one of the pool's connections, yielded for
        the migration to run on, so that a starting replica opens no connection beyond its
        pools. SQLite: a file lock beside the database (processes starting together on a new
        file race in Optuna's ``CREATE TABLE`` too), and None."""
        if self.is_sqlite:
            with self.file_lock("schema"):
                yield None
            return
        with self.transaction() as conn:
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(SCHEMA_LOCK)))
            yield conn

    @contextlib.contextmanager
    def file_lock(self, name: str) -> Iterator[None]:
        """SQLite: hold an exclusive lock on the file ``{database}.{name}.lock`` beside the
        database, across processes (nothing to lock for an in-memory database)."""
        path = self.engine.url.database
        if not path or path == ":memory:":
            yield
            return
        with open(f"{path}.{name}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def ping(self) -> None:
        with self.transaction() as conn:
            conn.execute(sa.text("SELECT 1"))


def _guarded(method: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except UNAVAILABLE as error:
            raise unavailable(error) from error

    return call


class GuardedStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage whose public calls raise ``DatabaseUnavailable`` instead of
    Optuna's ``StorageInternalError`` or a driver's error when the database is away."""


for _name, _member in list(vars(optuna.storages.RDBStorage).items()):
    if not _name.startswith("_") and inspect.isfunction(_member):
        setattr(GuardedStorage, _name, _guarded(_member))


def optuna_storage(url: str, heartbeat_interval: int, grace_period: int,
                   pool: Pool | None = None) -> GuardedStorage:
    url = sqlalchemy_url(url)
    engine_kwargs: dict[str, Any] = (
        {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else
        (pool or Pool()).kwargs(url))
    with warnings.catch_warnings():  # heartbeats are "experimental"
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return GuardedStorage(url, engine_kwargs=engine_kwargs,
                                  heartbeat_interval=heartbeat_interval,
                                  grace_period=grace_period)
        except UNAVAILABLE as error:
            raise unavailable(error) from error
