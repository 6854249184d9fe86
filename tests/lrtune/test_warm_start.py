"""Warm starts: an earlier study's best configurations are a new study's first trials."""

from __future__ import annotations

import pytest
from optuna.trial import TrialState

from lrtune import optuna_internals as internals
from lrtune.errors import SpecError
from lrtune.space import SearchSpace
from lrtune.spec import StudySpec
from lrtune.store import Store
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
