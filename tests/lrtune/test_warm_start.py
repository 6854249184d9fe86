"""Warm starts: an earlier study's best configurations are a new study's first trials."""

from __future__ import annotations

import math
import statistics

import pytest
from optuna.trial import TrialState

from lrtune import optuna_internals as internals
from lrtune.errors import SpecError
from lrtune.space import SearchSpace
from lrtune.spec import StudySpec, WarmStartSpec
from lrtune.store import Store, warm
from lrtune.store.warm import ATTR_WARM_START
from tests.conftest import MakeStore

SPACE = {"families": ["step", "cosine", "exponential"], "optimizers": ["sgd", "adam"],
         "lr": {"low": 1e-3, "high": 1e-1}}


def finished_study(store: Store, name: str, n: int, epochs: int = 4) -> tuple[int, list]:
    """A study of ``n`` trials, each finished COMPLETE with a made-up value; (id, trials
    best first as (value, params))."""
    spec = StudySpec(name=name, task="linreg", epochs=epochs, n_trials=n, space=SPACE)
    record = store.create_study(spec, "me")
    space = SearchSpace(spec.space)
    results = []
    while (claim := store.claim({record.id})) is not None:
        space.sample(claim.trial)
        value = (claim.trial.number * 7919) % 101 / 10.0  # distinct, in no order
        store.finish(claim, TrialState.COMPLETE, value)
        results.append((value, dict(claim.trial.params)))
    return record.id, sorted(results, key=lambda r: r[0])


def test_best_configurations_come_first_and_count_in_the_budget(
        make_store: MakeStore) -> None:
    store = make_store()
    source, best = finished_study(store, "earlier", 12)
    narrower = {**SPACE, "families": ["step", "cosine"]}  # exponential's do not fit
    fitting = [p for _, p in best if p["schedule"] != "exponential"][:3]
    spec = StudySpec(name="later", task="linreg", epochs=9, n_trials=5, space=narrower,
                     warm_start={"studies": [source], "top": 3})
    record = store.create_study(spec, "me")
    space = SearchSpace(spec.space)
    claimed = []
    while (claim := store.claim({record.id})) is not None:
        space.sample(claim.trial)
        claimed.append(claim)
        store.finish(claim, TrialState.COMPLETE, 1.0)
    assert len(claimed) == 5  # the budget: 3 warm trials and 2 sampled
    assert [dict(c.trial.params) for c in claimed[:3]] == fitting
    frozen = store.optuna_storage.get_all_trials(internals.study_id(claimed[0].study))
    assert [t.user_attrs.get(ATTR_WARM_START, {}).get("study") for t in frozen] == \
        [source] * 3 + [None] * 2
    assert store.get_study(record.id).status == "done"


def test_several_studies_take_turns_and_each_ranks_by_its_own_direction(
        make_store: MakeStore) -> None:
    store = make_store()
    first, best_first = finished_study(store, "first", 6)
    second, best_second = finished_study(store, "second", 6)
    spec = StudySpec(name="both", task="linreg", epochs=4, n_trials=4, space=SPACE,
                     warm_start={"studies": [second, first], "top": 3})
    record = store.create_study(spec, "me")
    claims = [store.claim({record.id}) for _ in range(3)]
    space = SearchSpace(spec.space)
    params = []
    for claim in claims:
        assert claim is not None
        space.sample(claim.trial)
        params.append(dict(claim.trial.params))
    assert params == [best_second[0][1], best_first[0][1], best_second[1][1]]


def test_a_study_not_there_is_refused_naming_the_field(make_store: MakeStore) -> None:
    store = make_store()
    spec = StudySpec(name="x", task="linreg", n_trials=3,
                     warm_start={"studies": [424242], "top": 2})
    with pytest.raises(SpecError) as refused:
        store.create_study(spec, "me")
    assert refused.value.field == "warm_start.studies.0"
    assert store.list_studies()[1] == 0  # nothing created


def lr_study(store: Store, name: str, n: int, epochs: int = 4, **spec: object) -> StudySpec:
    """A study of ``n`` trials whose value is the LR's distance (in log) from 2e-3: the
    best LRs are low in the range. Its spec."""
    made = StudySpec(name=name, task="linreg", epochs=epochs, n_trials=n, space=SPACE,
                     sampler={"name": "random", "seed": 1}, **spec)  # type: ignore[arg-type]
    record = store.create_study(made, "me")
    space = SearchSpace(made.space)
    while (claim := store.claim({record.id})) is not None:
        lr = space.sample(claim.trial).optimizer.lr
        store.finish(claim, TrialState.COMPLETE, abs(math.log(lr / 2e-3)))
    return made


def drawn_lrs(store: Store, spec: StudySpec) -> list[float]:
    record = store.create_study(spec, "me")
    space = SearchSpace(spec.space)
    lrs = []
    while (claim := store.claim({record.id})) is not None:
        config = space.sample(claim.trial)
        if ATTR_WARM_START not in claim.trial.user_attrs:
            lrs.append(config.optimizer.lr)
        store.finish(claim, TrialState.COMPLETE, abs(math.log(config.optimizer.lr / 2e-3)))
    return lrs


def test_earlier_results_are_the_samplers_history_not_trials(make_store: MakeStore) -> None:
    """With the same task, horizon and objective, TPE models from the earlier study's
    results at once (it samples its first 10 trials at random without them): the new
    study's first draws crowd where the earlier study did best. They are not its trials."""
    store = make_store()
    lr_study(store, "earlier", 30)
    earlier_id = next(r.id for r in store.list_studies()[0] if r.name == "earlier")
    tpe = {"name": "tpe", "seed": 3}
    cold = StudySpec(name="cold", task="linreg", epochs=4, n_trials=9, space=SPACE,
                     sampler=tpe)
    warm = cold.model_copy(update={"name": "warm", "warm_start": WarmStartSpec(
        studies=[earlier_id], top=1)})
    cold_lrs, warm_lrs = drawn_lrs(store, cold), drawn_lrs(store, warm)
    assert len(cold_lrs) == 9 and len(warm_lrs) == 8  # the budget: one warm trial queued

    def off(lrs: list[float]) -> float:
        return statistics.median(abs(math.log(lr / 2e-3)) for lr in lrs)

    assert off(warm_lrs) < 0.5 * off(cold_lrs), (warm_lrs, cold_lrs)
    record = store.get_study(next(r.id for r in store.list_studies()[0] if r.name == "warm"))
    assert len(store.optuna_study(record).trials) == 9  # its own trials only
    assert store.get_study(record.id).status == "done"


def test_another_horizon_gives_configurations_but_no_history(make_store: MakeStore) -> None:
    store = make_store()
    lr_study(store, "earlier", 12, epochs=4)
    earlier_id = next(r.id for r in store.list_studies()[0] if r.name == "earlier")
    for name, epochs, objective, kept in (("same", 4, "val_loss", 12),
                                          ("longer", 8, "val_loss", 0),
                                          ("other-metric", 4, "train_loss", 0)):
        spec = StudySpec(name=name, task="linreg", epochs=epochs, n_trials=3, space=SPACE,
                         objective=objective, warm_start={"studies": [earlier_id], "top": 2})
        sampler = store.optuna_study(store.create_study(spec, "me")).sampler
        assert len(getattr(sampler, "history", [])) == kept, name


def test_the_history_is_bounded_in_all(make_store: MakeStore,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """TPE's cost per sample grows with its history: ``HISTORY`` trials in all, shared
    evenly among the earlier studies, the best of each."""
    monkeypatch.setattr(warm, "HISTORY", 6)
    store = make_store()
    lr_study(store, "first", 12)
    lr_study(store, "second", 12)
    ids = [r.id for r in store.list_studies()[0]]
    spec = StudySpec(name="later", task="linreg", epochs=4, n_trials=3, space=SPACE,
                     warm_start={"studies": ids, "top": 1})
    history = store.optuna_study(store.create_study(spec, "me")).sampler.history  # type: ignore[attr-defined]
    assert len(history) == 6 and len({t._trial_id for t in history}) == 6
    for study_id in ids:
        record = store.get_study(study_id)
        values = sorted(t.value for t in store.optuna_study(record).trials)
        mine = {t._trial_id for t in store.optuna_study(record).trials}
        assert sorted(t.value for t in history if t._trial_id in mine) == values[:3]
