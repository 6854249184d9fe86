"""The counts and best trials the database keeps (lrtune/store/stats.py) equal what a full
scan of Optuna's tables says, whoever wrote the trials."""

from __future__ import annotations

import math
import random

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from lrtune.ledger import PackLedger
from lrtune.spec import StudySpec
from lrtune.store import Store, stats
from tests.conftest import MakeStore


def scanned(store: Store, name: str) -> tuple[dict[str, int], int | None]:
    """Counts and best trial number from every trial of the study."""
    study = optuna.load_study(study_name=name, storage=store.optuna_storage)
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    try:
        best = study.best_trial.number
    except ValueError:
        best = None
    return counts, best


def kept(store: Store, name: str) -> tuple[dict[str, int], int | None]:
    """Counts and best trial number as the read path gives them."""
    record = next(r for r in store.list_studies(limit=1000)[0] if r.name == name)
    summary = store.study_summary(record.id)[1]
    counts = {state: n for state, n in summary.counts.items() if n}
    return counts, summary.best.number if summary.best is not None else None


@pytest.mark.parametrize("objective", ["val_loss", "val_acc"])  # minimize, maximize
def test_counts_and_best_follow_every_writer(store: Store, objective: str) -> None:
    rng = random.Random(0 if objective == "val_loss" else 1)
    record = store.create_study(StudySpec(name="s", task="digits-mlp", epochs=2, n_trials=40,
                                          objective=objective), "me")
    values = [0.5, 0.25, math.inf, -math.inf, 0.75, 0.25, 1e-9, 3.0]
    for i in range(12):  # single trials: ended through the store
        claim = store.claim()
        assert claim is not None
        claim.trial.report(rng.random(), 0)
        state = rng.choice([TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED,
                            TrialState.FAIL])
        store.finish(claim, state, values[i % len(values)])
        assert kept(store, "s") == scanned(store, "s")
    claims = store.claim_pack(6)  # a pack: ended through the ledger
    ledger = PackLedger(store, claims)
    for i, claim in enumerate(claims):
        ledger.report(claim.trial.number, 0, 0.1 * i)
        ledger.finish(claim.trial.number, TrialState.COMPLETE if i % 2 else TrialState.PRUNED,
                      -0.1 * i if objective == "val_loss" else 10.0 * i)
    ledger.flush()
    assert kept(store, "s") == scanned(store, "s")
    held = store.claim()  # handed back: FAIL and a WAITING copy, then popped by a claim
    assert held is not None
    store.hand_back([held], "handed back: test")
    assert kept(store, "s") == scanned(store, "s")
    again = store.claim()
    assert again is not None and again.trial.number != held.trial.number
    assert kept(store, "s") == scanned(store, "s")
    study = store.optuna_study(record)  # plain Optuna, behind lrtune's back
    study.add_trial(optuna.trial.create_trial(value=-1e6 if objective == "val_loss" else 1e6))
    assert kept(store, "s") == scanned(store, "s")
    with store.transaction() as conn:  # a recount from scratch agrees with the triggers
        sid = store.optuna_study_id(record)
        before = {state: n for state, n in stats.counts(conn, [sid])[sid].items() if n}
        stats.recount(conn)
        assert stats.counts(conn, [sid])[sid] == before


def test_a_deleted_study_leaves_nothing_behind(store: Store) -> None:
    record = store.create_study(StudySpec(name="gone", task="linreg", n_trials=2), "me")
    claim = store.claim()
    assert claim is not None
    store.finish(claim, TrialState.COMPLETE, 1.0)
    store.delete(record.id)
    with store.transaction() as conn:
        for table in ("lrtune_trial_counts", "lrtune_study_best"):
            assert conn.execute(sa.text(f"SELECT COUNT(*) FROM {table}")).scalar_one() == 0


def test_installing_counts_what_is_there(store: Store, make_store: MakeStore) -> None:
    """A database with trials from before the triggers is counted when they are installed."""
    store.create_study(StudySpec(name="old", task="linreg", n_trials=3), "me")
    for value in (2.0, 1.0):
        claim = store.claim()
        assert claim is not None
        store.finish(claim, TrialState.COMPLETE, value)
    with store.transaction() as conn:
        conn.execute(sa.text("DELETE FROM lrtune_trial_counts"))
        conn.execute(sa.text("DELETE FROM lrtune_study_best"))
        if conn.dialect.name == "sqlite":
            for name in [r[0] for r in conn.execute(sa.text(
                    "SELECT name FROM sqlite_master WHERE type = 'trigger'"))]:
                conn.execute(sa.text(f"DROP TRIGGER {name}"))
        else:
            for table, trigger in (("trials", "trials"), ("trial_values", "value"),
                                   ("studies", "study_delete")):
                conn.execute(sa.text(f"DROP TRIGGER lrtune_{stats.VERSION}_{trigger} "
                                     f"ON {table}"))
    fresh = make_store()  # installs them again, counting the trials
    assert kept(fresh, "old") == ({"COMPLETE": 2}, 1)
