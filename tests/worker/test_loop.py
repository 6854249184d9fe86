"""The worker loop, its packs and its heartbeat, in this process: claims, trains, records,
and survives what one study or trial does to it."""

from __future__ import annotations

import threading
import time

import optuna
import sqlalchemy as sa
from optuna.trial import TrialState

from lrtune import optuna_internals as internals
from lrtune.spec import StudySpec
from lrtune.store import Store
from lrtune_worker.heartbeat import Heartbeat
from lrtune_worker.loop import Worker
from tests.conftest import CONVERGING_LR, MakeStore
from tests.faults.common import assert_exact_budget

TINY = {"task": "linreg", "epochs": 2,
        "space": {"families": ["cosine", "step"], "lr": CONVERGING_LR}}


def worker(store: Store, **kwargs: object) -> Worker:
    w = Worker(store.settings, device="cpu", exit_when_idle=True, **kwargs)  # type: ignore[arg-type]
    w.store = store
    return w


def test_the_loop_runs_single_trials_and_packs_to_their_exact_budget(store: Store) -> None:
    single = store.create_study(StudySpec(name="single", n_trials=4, **TINY), "me")
    packed = store.create_study(StudySpec(name="packed", n_trials=7, pack=3, **TINY), "me")
    assert worker(store).run() == 11
    for record in (single, packed):
        assert store.get_study(record.id).status == "done"
        assert_exact_budget(store, record)
    trials = store.all_trials(packed)
    assert all(t.user_attrs.get("lr_curve") for t in trials)  # the ledger wrote every epoch
    assert all(len(t.intermediate_values) == 2 for t in trials
               if t.state == TrialState.COMPLETE)


def test_a_study_gone_behind_lrtunes_back_fails_and_the_loop_goes_on(store: Store) -> None:
    gone = store.create_study(StudySpec(name="gone", n_trials=3, **TINY), "me")
    kept = store.create_study(StudySpec(name="kept", n_trials=3, **TINY), "me")
    optuna.delete_study(study_name="gone", storage=store.optuna_storage)
    assert worker(store).run() == 3
    assert store.get_study(gone.id).status == "failed"
    assert "no Optuna study" in (store.get_study(gone.id).reason or "")
    assert_exact_budget(store, kept)


def test_a_trial_reaped_under_the_worker_is_dropped_and_rerun(make_store: MakeStore) -> None:
    """Its report raises UpdateFinishedTrialError (Optuna) mid-training: the worker drops
    the trial, runs the re-queued copy, and the budget stays exact."""
    store = make_store()
    record = store.create_study(StudySpec(name="reaped", n_trials=2, task="linreg",
                                          epochs=40, pruner={"name": "none"}), "me")
    reaper = make_store()
    w = worker(store)
    done = threading.Event()
    runner = threading.Thread(target=lambda: (w.run(), done.set()))
    runner.start()
    deadline = time.monotonic() + 60
    while not store.trial_counts(record)["RUNNING"]:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    running = [t for t in store.all_trials(record) if t.state == TrialState.RUNNING]
    assert reaper.fail_and_requeue(internals.trial_id(running[0]), "lost: test", True)
    runner.join(timeout=120)
    assert done.is_set() and store.get_study(record.id).status == "done"
    assert_exact_budget(store, record)


def test_the_heartbeat_beats_a_pack_at_once_and_stops(store: Store) -> None:
    store.create_study(StudySpec(name="hb", n_trials=5, pack=5, **TINY), "me")
    claims = store.claim_pack(5)
    beats = internals.HEARTBEATS

    def beaten() -> dict[int, object]:
        with store.transaction() as conn:
            return dict(conn.execute(sa.select(beats.c.trial_id, beats.c.heartbeat)).all())

    with Heartbeat(store, [c.trial_id for c in claims], interval=0.05):
        deadline = time.monotonic() + 30
        while len(beaten()) < 5:  # the first beat is at once, for the whole pack
            assert time.monotonic() < deadline
            time.sleep(0.01)
    assert set(beaten()) == {c.trial_id for c in claims}
