"""Shared fixtures: a fresh database per test on SQLite and on PostgreSQL, real processes."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from lrtune.settings import Settings
from lrtune.store import Store

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
ROOT = Path(__file__).resolve().parents[1]
# linreg's LRs where no trial diverges: a test whose study must end done (a study where every
# trial diverged ends failed) or whose every trial must have an LR curve searches these
CONVERGING_LR = {"low": 1e-3, "high": 1e-2}


def _pg_database() -> Iterator[str]:
    name = f"lrtune_t_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as e:  # CI must fail, not skip, without PostgreSQL
        pytest.fail(f"PostgreSQL unreachable at 127.0.0.1:5432 ({e}); start it with "
                    "`pg_ctlcluster --skip-systemctl-redirect 15 main start`")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
            admin.execute(f'DROP DATABASE IF EXISTS "{name}"')


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'lrtune.db'}"
    else:
        yield from _pg_database()


MakeStore = Callable[..., Store]


@pytest.fixture
def make_store(db_url: str) -> Iterator[MakeStore]:
    """``make_store(**settings)``: a store on the test's database (SQLite and PostgreSQL),
    closed after the test. Its heartbeats are the defaults' (a trial is lost after a minute
    of silence): a test loses trials on purpose with ``age_trials``, never by waiting, so a
    slow machine loses none by accident."""
    made: list[Store] = []

    def make(**overrides: object) -> Store:
        made.append(Store(Settings(database_url=db_url, **overrides)))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for store in made:
        store.db.engine.dispose()
        store.optuna_storage.engine.dispose()


@pytest.fixture
def store(make_store: MakeStore) -> Store:
    """The one store fixture (see ``make_store``)."""
    return make_store()


def age_trials(store: Store, seconds: float = 3600) -> None:
    """Make every RUNNING trial look started, and last heartbeat, ``seconds`` ago (by the
    database's clock, as the reaper reads it): no sleeping through a grace period."""
    from lrtune import optuna_internals as internals

    with store.transaction() as conn:
        now = conn.execute(sa.select(sa.func.now())).scalar_one()
        if isinstance(now, str):
            now = datetime.fromisoformat(now)
        then = now.replace(tzinfo=None) - timedelta(seconds=seconds)
        trials, beats = internals.TRIALS, internals.HEARTBEATS
        running = sa.select(trials.c.trial_id).where(trials.c.state == TrialState.RUNNING)
        conn.execute(trials.update().where(trials.c.trial_id.in_(running))
                     .values(datetime_start=then))
        conn.execute(beats.update().where(beats.c.trial_id.in_(running)).values(heartbeat=then))


def pause_between_transactions(pid: int, db_url: str, tries: int = 100) -> None:
    """SIGSTOP ``pid`` at a moment it holds no database transaction open: paused inside one,
    it would hold SQLite's write lock (or PostgreSQL's row locks) for the whole pause, and the
    test's own writes would wait for it. Tries again, after a short resume, until it is so."""
    for _ in range(tries):
        os.kill(pid, signal.SIGSTOP)
        if not _transaction_open(db_url):
            return
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.05)
    raise TimeoutError(f"process {pid} never paused outside a transaction")


def _transaction_open(db_url: str) -> bool:
    if db_url.startswith("sqlite"):
        probe = sqlite3.connect(db_url.removeprefix("sqlite:///"), timeout=0.5,
                                isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
            return False
        except sqlite3.OperationalError:
            return True
        finally:
            probe.close()
    with psycopg.connect(db_url.replace("postgresql+psycopg", "postgresql"),
                         autocommit=True) as probe:
        open_ = probe.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                              "current_database() AND xact_start IS NOT NULL "
                              "AND pid <> pg_backend_pid()")
        return bool(open_.fetchone()[0])  # type: ignore[index]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def lrtune_env(db_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LRTUNE_")}
    env.update(LRTUNE_DATABASE_URL=db_url, LRTUNE_HEARTBEAT_INTERVAL="1",
               LRTUNE_HEARTBEAT_GRACE="4", LRTUNE_IDLE_MAX="0.5", LRTUNE_TORCH_THREADS="1",
               PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    handle = open(log, "ab")  # noqa: SIM115 - closed with the process by the owner
    return subprocess.Popen([sys.executable, "-m", "lrtune", *args], env=env, cwd=ROOT,
                            stdout=handle, stderr=subprocess.STDOUT)


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready in {timeout}s")


def stop(*procs: subprocess.Popen, timeout: float = 20) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
