"""Helpers for fault tests: a study's trials straight from the store."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import optuna

from lrtune.store import Store, StudyRecord

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
