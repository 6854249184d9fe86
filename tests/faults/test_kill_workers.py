"""4 workers on a 40-trial study; every ~2 s one gets SIGKILL and a new one starts: workers
over the database, and workers over HTTP (whose lost leases the API reaps).

Kills stop at MAX_KILLS so that a loaded machine (workers slow to start) still finishes."""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lrtune.spec import StudySpec
from lrtune.store import Store, StudyRecord
from tests.conftest import MakeStore, stop
from tests.faults.common import DEPLOYMENTS, assert_exact_budget, trials, workers_over

N_TRIALS = 40
TIME_LIMIT = 600
MAX_KILLS = 14


@pytest.mark.parametrize(("db_url", "over"), DEPLOYMENTS, indirect=["db_url"])
def test_sigkilled_workers_lose_no_trial(over: str, db_url: str, make_store: MakeStore,
        tmp_path: Path) -> None:
    store = make_store(heartbeat_interval=1, heartbeat_grace=4)
    record = store.create_study(StudySpec(
        name="kills", task="digits-mlp", epochs=25, n_trials=N_TRIALS, pruner={"name": "none"},
        space={"families": ["cosine", "step", "onecycle"], "optimizers": ["momentum", "adam"],
               "lr": {"low": 1e-3, "high": 0.1}}), "me")
    rng = random.Random(0)
    started = 0
    with workers_over(over, db_url, tmp_path, LRTUNE_MAX_RETRIES="10") as spawn_worker:

        def start() -> object:
            nonlocal started
            started += 1
            return spawn_worker(f"worker{started}")

        kills = run_with_kills(store, record, start, rng)
    assert kills >= 10
    assert_exact_budget(store, record)
    all_trials = trials(store, record)
    lost = [t for t in all_trials if t.state.name == "FAIL"]
    assert all(t.user_attrs["reason"].startswith("lost") for t in lost)
    retries = [t.user_attrs["retry_of"] for t in all_trials if "retry_of" in t.user_attrs]
    assert sorted(retries) == sorted(t.number for t in lost)  # each lost trial re-run once
    print(f"kills={kills} workers started={started} lost trials={len(lost)} "
          f"finished={N_TRIALS} trials lost=0")


def run_with_kills(store: Store, record: StudyRecord, start: Callable[[], object],
                   rng: random.Random) -> int:
    """Four workers until the study ends, a random one SIGKILLed and replaced every ~2 s
    (at most MAX_KILLS times); the number of kills."""
    workers = [start() for _ in range(4)]
    kills = 0
    deadline = time.monotonic() + TIME_LIMIT
    try:
        while store.get_study(record.id).status == "running":
            assert time.monotonic() < deadline, store.trial_counts(record)
            time.sleep(2.0)
            counts = store.trial_counts(record)
            if kills < MAX_KILLS and counts["COMPLETE"] + counts["PRUNED"] < N_TRIALS - 4:
                victim = workers.pop(rng.randrange(len(workers)))
                victim.send_signal(signal.SIGKILL)  # type: ignore[attr-defined]
                victim.wait()  # type: ignore[attr-defined]
                kills += 1
                workers.append(start())
    finally:
        stop(*workers)  # type: ignore[arg-type]
    return kills
