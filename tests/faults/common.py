"""Helpers for fault tests: a study's trials straight from the store; workers over the
database or over HTTP."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna

from lrtune.store import Store, StudyRecord
from tests.conftest import free_port, lrtune_env, spawn, stop, wait_ready

PLUGINS = str(Path(__file__).resolve().parents[1] / "plugins")
if PLUGINS not in sys.path:  # the fault tasks' entry points, as an installed plugin would be
    sys.path.append(PLUGINS)


def trials(store: Store, record: StudyRecord) -> list[optuna.trial.FrozenTrial]:
    storage = store.optuna_storage
    return storage.get_all_trials(storage.get_study_id_from_name(record.name), deepcopy=False)


def wait_status(store: Store, record: StudyRecord, timeout: float) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        status = store.get_study(record.id).status
        if status != "running":
            return status
        time.sleep(0.5)
    raise TimeoutError(f"study {record.name} still running after {timeout}s: "
                       f"{store.trial_counts(record)}")


def assert_exact_budget(store: Store, record: StudyRecord) -> None:
    all_trials = trials(store, record)
    numbers = [t.number for t in all_trials]
    assert len(numbers) == len(set(numbers))
    states = [t.state.name for t in all_trials]
    assert states.count("COMPLETE") + states.count("PRUNED") == record.n_trials, {
        s: states.count(s) for s in set(states)}
    assert "RUNNING" not in states and "WAITING" not in states


# Workers over the database, or over HTTP (`lrtune worker --url`): the real-worker tests run
# with each. Over HTTP the API runs alone (`serve --workers 0`) and takes a worker token; the
# workers hold that token and a database URL that leads nowhere, so they can only train through
# the lease protocol.
OVER = ["database", "http"]
# Database workers on both databases; HTTP workers on PostgreSQL, the database a fleet reaching
# the API over HTTP runs on (``parametrize(("db_url", "over"), DEPLOYMENTS, ...)``).
DEPLOYMENTS = [("sqlite", "database"), ("postgresql", "database"), ("postgresql", "http")]
WORKER_TOKEN = "lrt_test_worker_token"
NO_DATABASE = "postgresql+psycopg://nobody@127.0.0.1:1/none"
Start = Callable[..., subprocess.Popen]


@contextlib.contextmanager
def workers_over(over: str, db_url: str, tmp: Path, **extra: str) -> Iterator[Start]:
    """``start(log_name, *args)`` starts ``lrtune worker *args`` over ``over``; ``extra``:
    settings of the workers (and of the API, over HTTP). The API and its log are stopped and
    printed at the end; the workers are the caller's to stop."""
    if over == "database":
        env = lrtune_env(db_url, **extra)
        yield lambda name, *args: spawn(["worker", *args], env, tmp / f"{name}.log")
        return
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = spawn(["serve", "--port", str(port), "--workers", "0"],
                   lrtune_env(db_url, LRTUNE_WORKER_TOKENS=WORKER_TOKEN, **extra),
                   tmp / "api.log")
    env = lrtune_env(NO_DATABASE, LRTUNE_TOKEN=WORKER_TOKEN, **extra)
    try:
        wait_ready(url, server)
        yield lambda name, *args: spawn(["worker", "--url", url, *args], env,
                                        tmp / f"{name}.log")
    finally:
        stop(server)
        print(f"--- api.log\n{(tmp / 'api.log').read_text()[-3000:]}")
