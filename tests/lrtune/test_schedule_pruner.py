"""The schedule-aware pruner: forecasts from the LR path, spares late decayers, falls back."""

from __future__ import annotations

import math
import pickle
from datetime import datetime
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from pydantic import ValidationError

from lrtune import schedule_pruning
from lrtune.schedule_pruning import SchedulePruner, lr_path, schedule_of
from lrtune.schedules import Schedule
from lrtune.spec import PrunerSpec, StudySpec
from lrtune.study import ATTR_CONFIG, make_pruner

EPOCHS = 12
STAMP = datetime(2026, 1, 1)
RUNNING, COMPLETE = TrialState.RUNNING, TrialState.COMPLETE
MIN = StudyDirection.MINIMIZE


def config(family: str, **params: Any) -> dict[str, Any]:
    return {"schedule": Schedule.build(family, params).to_dict()}


def curve(quality: float, family: str, **params: Any) -> list[float]:
    """A loss that follows the law: log L = log quality - 0.2 log S + 1.5 r (high LR: noisy,
    more LR area: further), for the schedule's path over EPOCHS epochs."""
    path = lr_path(trial(0, [1.0], RUNNING, config(family, **params)), EPOCHS, MIN)
    assert path is not None
    ends, areas = path
    return [quality * math.exp(-0.2 * math.log(s) + 1.5 * r) for r, s in zip(ends, areas,
                                                                          strict=True)]


def trial(number: int, values: list[float], state: TrialState,
          attrs: dict[str, Any] | None = None) -> FrozenTrial:
    running = state == RUNNING
    return FrozenTrial(
        number=number, trial_id=number, state=state, value=None if running else values[-1],
        values=None, datetime_start=STAMP, datetime_complete=None if running else STAMP,
        params={}, distributions={}, user_attrs={ATTR_CONFIG: attrs} if attrs else {},
        system_attrs={}, intermediate_values=dict(enumerate(values)))


FINISHED = [  # (quality, family, params): early decayers look good early, most end worse
    (1.0, "exponential", {"gamma": 0.5}), (1.1, "exponential", {"gamma": 0.6}),
    (0.9, "exponential", {"gamma": 0.7}), (1.2, "inverse_time", {"decay_rate": 2.0}),
    (1.0, "inverse_time", {"decay_rate": 1.0}), (0.8, "constant", {}),
    (0.7, "cosine", {"eta_min_ratio": 0.0}), (0.9, "step", {"step_size": 0.3, "gamma": 0.1}),
    (1.3, "exponential", {"gamma": 0.8}), (0.75, "polynomial", {"power": 1.0,
                                                                 "end_factor": 0.0}),
]


def study_of(finished: list[tuple[float, str, dict[str, Any]]]) -> optuna.Study:
    study = optuna.create_study()
    for i, (quality, family, params) in enumerate(finished):
        study.add_trial(trial(i, curve(quality, family, **params), COMPLETE,
                              config(family, **params)))
    return study


def test_a_late_decayer_is_forecast_below_its_current_value() -> None:
    study = study_of(FINISHED)
    pruner = SchedulePruner(EPOCHS, n_warmup_steps=3)
    law = pruner.law(study.get_trials(states=(COMPLETE,)), MIN, study.study_name)
    assert law is not None
    values = curve(0.6, "cosine", eta_min_ratio=0.0)
    running = trial(99, values[:5], RUNNING, config("cosine", eta_min_ratio=0.0))
    path = lr_path(running, EPOCHS, MIN)
    assert path is not None
    forecast = law.value(law.forecast(values[:5], path, 4))
    now, final = values[4], values[-1]
    assert final < forecast < now
    assert abs(forecast - final) < 0.25 * (now - final)


def test_a_late_decayer_the_percentile_rule_prunes_is_kept() -> None:
    study = study_of(FINISHED)
    schedule = make_pruner(PrunerSpec(name="schedule"), EPOCHS)
    percentile = make_pruner(PrunerSpec(name="percentile"), EPOCHS)
    assert isinstance(schedule, SchedulePruner)
    late = config("wsd", warmup=0.0, decay=0.3, shape="linear")
    winner = curve(0.6, "wsd", warmup=0.0, decay=0.3, shape="linear")
    assert winner[-1] < min(t.value for t in study.trials if t.value is not None)
    running = trial(99, winner[:5], RUNNING, late)
    assert percentile.prune(study, running)  # at full LR it looks worse than most
    assert not schedule.prune(study, running)
    assert not schedule.prune(study, running)  # deterministic
    hopeless = trial(100, curve(3.0, "wsd", warmup=0.0, decay=0.3, shape="linear")[:5],
                     RUNNING, late)
    assert schedule.prune(study, hopeless)
    early = trial(101, winner[:2], RUNNING, late)  # within the warm-up epochs: never
    assert not schedule.prune(study, early)


def test_with_few_completed_trials_it_is_the_percentile_rule() -> None:
    study = study_of(FINISHED[:6])  # past the 5 start-up trials, short of the 8 of a fit
    schedule = make_pruner(PrunerSpec(name="schedule"), EPOCHS)
    percentile = make_pruner(PrunerSpec(name="percentile"), EPOCHS)
    assert isinstance(schedule, SchedulePruner)
    assert schedule.law(study.get_trials(states=(COMPLETE,)), MIN, study.study_name) is None
    late = config("wsd", warmup=0.0, decay=0.3, shape="linear")
    decisions = []
    for number, quality in enumerate((0.2, 0.6, 3.0), start=50):
        running = trial(number, curve(quality, "wsd", warmup=0.0, decay=0.3,
                                      shape="linear")[:5], RUNNING, late)
        decisions.append(schedule.prune(study, running))
        assert decisions[-1] == percentile.prune(study, running)
    assert True in decisions and False in decisions
    unknown = trial(60, [9.0] * 5, RUNNING)  # no config, no parameters: no path
    big = study_of(FINISHED)
    assert schedule.prune(big, unknown) == percentile.prune(big, unknown)


def test_the_path_comes_from_the_config_or_the_parameters() -> None:
    params = {"schedule": "onecycle", "lr": 0.1, "onecycle.pct_start": 0.3,
              "warmup.fraction": 0.1}
    dists = {"schedule": CategoricalDistribution(["onecycle", "cosine"]),
             "lr": FloatDistribution(1e-4, 1.0, log=True),
             "onecycle.pct_start": FloatDistribution(0.1, 0.5),
             "warmup.fraction": FloatDistribution(0.0, 0.3)}
    from_params = trial(1, [1.0], RUNNING)
    from_params.params, from_params.distributions = params, dists
    stored = Schedule.build("onecycle", {"pct_start": 0.3}, {"fraction": 0.1})
    from_config = trial(2, [1.0], RUNNING, {"schedule": stored.to_dict()})
    assert schedule_of(from_params, MIN) == schedule_of(from_config, MIN) == stored
    path = lr_path(from_config, 10, MIN)
    assert path is not None
    ends, areas = path
    assert len(ends) == len(areas) == 10 and max(ends) <= 1.0 and ends[-1] < 0.01
    assert areas == tuple(sorted(areas)) and 0 < areas[-1] < 1
    cyclic = trial(3, [1.0], RUNNING)
    cyclic.params = {"schedule": "cyclic", "cyclic.mode": "triangular2"}
    assert schedule_of(cyclic, MIN) is not None  # a "mode" that is not plateau's kept


def test_the_pruner_pickles_and_is_rebuilt_from_the_spec() -> None:
    study = study_of(FINISHED)
    pruner = make_pruner(PrunerSpec(name="schedule"), EPOCHS)
    copy = pickle.loads(pickle.dumps(pruner))
    running = trial(99, curve(1.5, "cosine", eta_min_ratio=0.0)[:6], RUNNING,
                    config("cosine", eta_min_ratio=0.0))
    schedule_pruning._LAWS.clear()
    assert copy.prune(study, running) == pruner.prune(study, running)
    assert schedule_pruning.ATTR_CONFIG == ATTR_CONFIG  # the attribute the pruner reads


def test_the_spec_takes_schedule_and_refuses_an_unknown_pruner() -> None:
    spec = StudySpec(name="s", task="linreg", pruner={"name": "schedule"})
    assert spec.pruner.name == "schedule"
    with pytest.raises(ValidationError) as caught:
        StudySpec(name="s", task="linreg", pruner={"name": "forecast"})
    assert caught.value.errors()[0]["loc"] == ("pruner", "name")


@pytest.mark.parametrize("kwargs", [{"epochs": 0}, {"epochs": 5, "percentile": 101.0},
                                    {"epochs": 5, "n_warmup_steps": -1},
                                    {"epochs": 5, "margin": -0.5}])
def test_bad_arguments_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="got"):
        SchedulePruner(**kwargs)


def test_the_law_is_fitted_on_the_latest_completed_trials_only(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A refit costs in proportion to its trials: a study of many completed trials fits on
    the latest ``FIT_TRIALS`` of them (a report can not cost seconds of the server's CPU)."""
    monkeypatch.setattr(schedule_pruning, "FIT_TRIALS", 9)
    fitted: list[list[int]] = []
    law = SchedulePruner.law

    def spied(self: SchedulePruner, completed: Any, *args: Any) -> Any:
        fitted.append([t.number for t in completed])
        return law(self, completed, *args)

    monkeypatch.setattr(SchedulePruner, "law", spied)
    study = study_of(FINISHED)
    late = config("wsd", warmup=0.0, decay=0.3, shape="linear")
    pruner = make_pruner(PrunerSpec(name="schedule"), EPOCHS)
    pruner.prune(study, trial(99, curve(0.6, "wsd", warmup=0.0, decay=0.3,
                                        shape="linear")[:5], RUNNING, late))
    numbers = sorted(t.number for t in study.trials)
    assert len(numbers) > 9 and fitted == [numbers[-9:]]
