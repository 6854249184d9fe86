"""The default pruner: the 75th-percentile rule, which spares late-decaying schedules."""

from __future__ import annotations

from datetime import datetime

import optuna

from lrtune.spec import PrunerSpec, StudySpec
from lrtune.study import make_pruner

EPOCHS = 10
STAMP = datetime(2026, 1, 1)


def trial(number: int, values: list[float], state: optuna.trial.TrialState
          ) -> optuna.trial.FrozenTrial:
    running = state == optuna.trial.TrialState.RUNNING
    return optuna.trial.FrozenTrial(
        number=number, trial_id=number, state=state, value=None if running else values[-1],
        values=None, datetime_start=STAMP, datetime_complete=None if running else STAMP,
        params={}, distributions={}, user_attrs={}, system_attrs={},
        intermediate_values=dict(enumerate(values)))


def study_of(curves: list[list[float]]) -> optuna.Study:
    study = optuna.create_study()
    for i, values in enumerate(curves):
        study.add_trial(trial(i, values, optuna.trial.TrialState.COMPLETE))
    return study


def test_the_default_is_the_percentile_rule() -> None:
    spec = StudySpec(name="s", task="linreg")
    assert spec.pruner.name == "percentile"
    assert isinstance(make_pruner(spec.pruner, EPOCHS), optuna.pruners.PercentilePruner)


def test_a_late_decayer_between_median_and_75th_percentile_survives() -> None:
    # eight finished trials; at epoch 3 their losses are 0.3 .. 1.0
    study = study_of([[1.0, 0.9, 0.5, 0.3 + 0.1 * i] + [0.3] * 6 for i in range(8)])
    running = optuna.trial.TrialState.RUNNING
    slow = trial(8, [1.2, 1.1, 0.9, 0.75], running)  # still at high LR: above the median
    median = make_pruner(PrunerSpec(name="median"), EPOCHS)
    default = make_pruner(PrunerSpec(), EPOCHS)
    assert median.prune(study, slow)
    assert not default.prune(study, slow)
    hopeless = trial(9, [1.3, 1.3, 1.3, 1.2], running)  # worse than three quarters of them
    assert default.prune(study, hopeless)
    early = trial(10, [1.3, 1.3], running)  # within the warm-up epochs: never
    assert not default.prune(study, early)
