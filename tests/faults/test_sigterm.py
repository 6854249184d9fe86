"""SIGTERM to a busy worker, over the database or over HTTP: it exits 0 within the grace time
and its trial is re-run."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import optuna
import pytest

from lrtune.spec import StudySpec
from lrtune.store import Store, StudyRecord
from tests.conftest import MakeStore, stop
from tests.faults.common import DEPLOYMENTS, Start, workers_over


@pytest.mark.parametrize(("db_url", "over"), DEPLOYMENTS, indirect=["db_url"])
def test_sigterm_hands_the_trial_back(over: str, db_url: str, make_store: MakeStore,
                                      tmp_path: Path) -> None:
    store = make_store(heartbeat_interval=10, heartbeat_grace=60)
    record = store.create_study(StudySpec(
        name="slow", task="digits-mlp", epochs=40, n_trials=2, pruner={"name": "none"},
        space={"families": ["cosine"], "optimizers": ["momentum"],
               "lr": {"low": 0.01, "high": 0.02}}), "me")
    with workers_over(over, db_url, tmp_path) as start:
        hand_back_and_finish(store, record, start, tmp_path)


def hand_back_and_finish(store: Store, record: StudyRecord, start: Start, tmp_path: Path
                         ) -> None:
    busy = start("busy")
    try:
        deadline = time.monotonic() + 60
        while store.trial_counts(record)["RUNNING"] == 0:
            assert time.monotonic() < deadline, (tmp_path / "busy.log").read_text()
            time.sleep(0.2)
        time.sleep(1.0)  # mid-trial
        sent = time.monotonic()
        busy.send_signal(signal.SIGTERM)
        assert busy.wait(timeout=30) == 0
        assert time.monotonic() - sent < store.settings.heartbeat_grace
    finally:
        stop(busy)
    trials = store.optuna_storage.get_all_trials(
        store.optuna_storage.get_study_id_from_name("slow"))
    handed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(handed) == 1 and handed[0].user_attrs["reason"].startswith("handed back")
    waiting = [t for t in trials if t.state == optuna.trial.TrialState.WAITING]
    assert len(waiting) == 1 and waiting[0].params == handed[0].params
    finisher = start("finisher", "--exit-when-idle")
    try:
        assert finisher.wait(timeout=300) == 0
    finally:
        stop(finisher)
    counts = store.trial_counts(record)
    assert counts["COMPLETE"] + counts["PRUNED"] == 2 and counts["WAITING"] == 0
    assert store.get_study(record.id).status == "done"
