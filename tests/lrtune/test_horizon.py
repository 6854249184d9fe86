"""The horizon ladder: which rung each claim runs, promotions, the budget, and the spec."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.study import StudyDirection
from optuna.trial import TrialState

from lrtune import horizon
from lrtune import optuna_internals as internals
from lrtune.attrs import ATTR_HORIZON
from lrtune.errors import SpecError
from lrtune.horizon import Rung
from lrtune.space import SearchSpace
from lrtune.spec import PrunerSpec, StudySpec
from tests.conftest import MakeStore, age_trials

LADDER = PrunerSpec(name="horizon")
SPACE = {"families": ["cosine", "step"], "optimizers": ["sgd", "adam"],
         "lr": {"low": 1e-3, "high": 1e-1}}


def finished(study: optuna.Study, rung: Rung, value: float | None
             ) -> optuna.trial.FrozenTrial:
    """A trial of ``study`` run on ``rung`` and ended with ``value`` (None: diverged)."""
    trial = study.ask()
    trial.suggest_float("lr", 1e-3, 1e-1, log=True)
    trial.set_user_attr(ATTR_HORIZON, rung.attr())
    if value is None:
        study.tell(trial, state=TrialState.PRUNED)
    else:
        trial.report(value, 0)
        study.tell(trial, value if rung.top else None,
                   state=TrialState.COMPLETE if rung.top else TrialState.PRUNED)
    return study.trials[-1]


def plan(study: optuna.Study, slots_left: int, n_trials: int,
         lr_bounds: tuple[float, float] | None = None) -> Rung:
    """The ladder's next rung for ``study`` as it stands."""
    return horizon.next_rung(horizon.runs_of(study.trials), LADDER, study.direction,
                             slots_left, n_trials, lr_bounds)


def rung0() -> Rung:
    return Rung(0, 3, 1 / 9)


def test_fractions_steps_and_reasons() -> None:
    rungs, eta = horizon.shape(LADDER)
    assert (rungs, eta) == (3, 3)
    assert [horizon.fraction(k, 3, 3) for k in range(3)] == [1 / 9, 1 / 3, 1.0]
    assert horizon.shape(PrunerSpec(name="horizon", rungs=4, eta=2)) == (4, 2)
    assert rung0().steps(900) == 100
    assert rung0().steps(90) == horizon.MIN_STEPS  # a schedule's phases need some steps
    assert rung0().steps(10) == 10  # never past the study's own horizon
    assert Rung(2, 3, 1.0).steps(901) == 901
    assert rung0().reason().startswith("rung 0 of 3")
    assert Rung.from_attr(rung0().attr()) == rung0() and Rung.from_attr(None) is None
    for forged in ("rung 0", {"rung": 0}, {"rung": "x", "rungs": 3, "fraction": 0.1},
                   {"rung": 3, "rungs": 3, "fraction": 1.0}, [0, 3, 0.5],
                   {"rung": 0, "rungs": 3, "fraction": 0.5, "promoted_from": [1]}):
        assert Rung.from_attr(forged) is None  # written behind lrtune's back: no rung


def test_an_empty_study_starts_on_the_lowest_rung() -> None:
    rung = horizon.next_rung([], LADDER, StudyDirection.MINIMIZE, 40, 40)
    assert (rung.rung, rung.fraction, rung.params) == (0, 1 / 9, None)


def test_the_best_of_every_eta_runs_is_promoted_once_with_its_params() -> None:
    study = optuna.create_study()
    runs = [finished(study, rung0(), v) for v in (3.0, 1.0, 2.0)]
    rung = plan(study, 30, 40, (1e-3, 1e-1))
    assert (rung.rung, rung.promoted_from) == (1, runs[1].number)
    shift = horizon.lr_shift(1 / 9, 1 / 3)
    assert rung.params is not None
    assert math.isclose(rung.params["lr"], min(max(runs[1].params["lr"] * shift, 1e-3), 1e-1))
    started = horizon.start(study, rung)  # enqueued with fixed params, popped at once
    assert started.user_attrs[ATTR_HORIZON]["promoted_from"] == runs[1].number
    assert started.suggest_float("lr", 1e-3, 1e-1, log=True) == rung.params["lr"]
    again = plan(study, 29, 40)
    assert (again.rung, again.params) == (0, None)  # 3 runs promote one, and it was


def test_tpe_sees_each_configuration_once_at_its_latest_run(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A promoted run repeats its parent's parameters: TPE's view of a ladder study keeps
    the latest run of each configuration (its parent ranked below the best, its copy among
    the best, would cancel out in TPE's ratio of the two densities)."""
    from lrtune.tpe import LazyGroupTPESampler

    study = optuna.create_study(sampler=LazyGroupTPESampler(seed=0, n_startup_trials=2))
    runs = [finished(study, rung0(), v) for v in (3.0, 1.0, 2.0)]
    promoted = horizon.start(study, plan(study, 30, 40))
    latest = [runs[0].number, runs[2].number, promoted.number]
    assert [t.number for t in horizon.latest_runs(study.trials)] == latest
    promoted.report(0.5, 2)
    study.tell(promoted, state=TrialState.PRUNED)
    seen: list[list[int]] = []
    kept_by_lrtune = horizon.latest_runs

    def recorded(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
        kept = kept_by_lrtune(trials)
        seen.append([t.number for t in kept if t.state == TrialState.PRUNED])
        return kept

    monkeypatch.setattr(horizon, "latest_runs", recorded)
    fresh = study.ask()  # TPE draws through the view: 3 configurations, past its start-up
    assert 1e-3 <= fresh.suggest_float("lr", 1e-3, 1e-1, log=True) <= 1e-1
    assert seen and all(numbers == latest for numbers in seen)


def test_a_higher_rung_promotes_first_and_direction_counts() -> None:
    study = optuna.create_study(direction="maximize")
    for v in (1.0, 5.0, 3.0, 4.0, 2.0, 0.5):
        finished(study, rung0(), v)
    ones = [finished(study, Rung(1, 3, 1 / 3, k), v) for k, v in ((1, 0.2), (3, 0.9), (2, 0.7))]
    rung = plan(study, 20, 40)
    assert (rung.rung, rung.promoted_from) == (2, ones[1].number)  # the highest value
    assert rung.top and rung.fraction == 1.0


def test_diverged_runs_count_but_are_never_promoted() -> None:
    study = optuna.create_study()
    finished(study, rung0(), None)
    finished(study, rung0(), None)
    best = finished(study, rung0(), 2.0)
    rung = plan(study, 30, 40)
    assert rung.promoted_from == best.number
    study2 = optuna.create_study()
    for _ in range(3):
        finished(study2, rung0(), None)
    assert plan(study2, 30, 40).rung == 0


def test_the_last_slots_run_the_best_unpromoted_on_the_full_horizon() -> None:
    study = optuna.create_study()
    runs = [finished(study, rung0(), v) for v in (3.0, 1.0)]  # too few to promote
    assert horizon.endgame(40, 3, 3) == 1 and horizon.endgame(120, 3, 3) == 4
    rung = plan(study, 4, 120)
    assert (rung.rung, rung.promoted_from) == (2, runs[1].number)
    horizon.start(study, rung)
    rung = plan(study, 3, 120)
    assert (rung.rung, rung.promoted_from) == (2, runs[0].number)
    horizon.start(study, rung)
    fresh = plan(study, 2, 120)
    assert (fresh.rung, fresh.params) == (2, None)  # nothing left to promote: a new draw


@pytest.mark.parametrize(("spec", "field"), [
    ({"pruner": {"name": "percentile", "eta": 3}}, "pruner.eta"),
    ({"pruner": {"name": "none", "rungs": 3}}, "pruner.rungs"),
    ({"pruner": {"name": "horizon", "rungs": 1}}, "pruner.rungs"),
    ({"pruner": {"name": "horizon", "eta": 11}}, "pruner.eta"),
    ({"pruner": {"name": "horizon"}, "task": "external"}, "pruner.name"),
])
def test_the_options_are_validated_naming_the_field(spec: dict, field: str) -> None:
    from pydantic import ValidationError

    from lrtune.spec import explain

    raw = {"name": "s", "task": "linreg", **spec}
    with pytest.raises((SpecError, ValidationError)) as caught:
        StudySpec.model_validate(raw)
    error = caught.value
    named = error.field if isinstance(error, SpecError) else explain(error.errors()[0])[0]
    assert named == field


def test_claims_climb_the_ladder_within_the_exact_budget(make_store: MakeStore) -> None:
    """Real claims on the store: every run one trial of n_trials, rungs below the top
    PRUNED, promotions repeat their source's parameters, a lost run's copy keeps its rung."""
    store = make_store()
    spec = StudySpec(name="ladder", task="linreg", epochs=9, n_trials=20, space=SPACE,
                     pruner={"name": "horizon"}, sampler={"name": "random", "seed": 1})
    record = store.create_study(spec, "me")
    space = SearchSpace(spec.space)
    seen, lost = [], False
    while (claim := store.claim({record.id})) is not None:
        assert claim.rung is not None
        space.sample(claim.trial)
        if not lost and claim.rung.rung == 1:  # lose one promoted run: its copy re-runs
            age_trials(store)
            assert store.reap(record) == 1
            lost = True
            continue
        lr = float(claim.trial.params["lr"])
        value = abs(math.log10(lr) + 1.5) + 1.0 / (1 + claim.rung.rung)
        claim.trial.report(value, 0)
        state = TrialState.COMPLETE if claim.rung.top else TrialState.PRUNED
        assert store.finish(claim, state, value if claim.rung.top else None)
        seen.append(claim)
    assert lost
    frozen = store.optuna_storage.get_all_trials(internals.study_id(seen[0].study))
    ended = [t for t in frozen if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(ended) == 20 and not [t for t in frozen if t.state == TrialState.RUNNING]
    rungs = {t.number: Rung.from_attr(t.user_attrs[ATTR_HORIZON]) for t in frozen}
    assert {r.rung for r in rungs.values() if r} == {0, 1, 2}
    complete = [t for t in ended if t.state == TrialState.COMPLETE]
    assert complete and all(rungs[t.number].top for t in complete)
    by_number = {t.number: t for t in frozen}
    for t in ended:
        source = rungs[t.number].promoted_from
        if source is not None:
            before, after = dict(by_number[source].params), dict(t.params)
            assert before.pop("lr") > 0 and after.pop("lr") > 0 and before == after
    retried = [t for t in frozen if "retry_of" in t.user_attrs]
    assert retried and all(rungs[t.number] == rungs[t.user_attrs["retry_of"]]
                           for t in retried)
    assert store.get_study(record.id).status == "done"
