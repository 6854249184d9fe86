"""The progress-aware median pruner: trials compared with peers at the same LR phase."""

from __future__ import annotations

from datetime import datetime

import optuna
import pytest

from lrtune.spec import PrunerSpec
from lrtune.study import ProgressMedianPruner, lr_phase, make_pruner

EPOCHS = 10
CHOICES = ["constant", "cosine", "exponential"]
STAMP = datetime(2026, 1, 1)


def trial(number: int, family: str, values: list[float], state: optuna.trial.TrialState,
          **params: float) -> optuna.trial.FrozenTrial:
    dists: dict[str, optuna.distributions.BaseDistribution] = {
        "schedule": optuna.distributions.CategoricalDistribution(CHOICES)}
    for name in params:
        dists[name] = optuna.distributions.FloatDistribution(0.01, 0.99)
    running = state == optuna.trial.TrialState.RUNNING
    return optuna.trial.FrozenTrial(
        number=number, trial_id=number, state=state, value=None if running else values[-1],
        values=None, datetime_start=STAMP, datetime_complete=None if running else STAMP,
        params={"schedule": family, **params}, distributions=dists, user_attrs={},
        system_attrs={}, intermediate_values=dict(enumerate(values)))


def test_phase_follows_the_schedule_formula() -> None:
    done = optuna.trial.TrialState.COMPLETE
    constant = trial(0, "constant", [1.0] * EPOCHS, done)
    cosine = trial(1, "cosine", [1.0] * EPOCHS, done)
    fast = trial(2, "exponential", [1.0] * EPOCHS, done, **{"exponential.gamma": 0.3})
    assert [lr_phase(constant, e, EPOCHS) for e in (0, 5, 9)] == [0, 0, 0]
    assert [lr_phase(cosine, e, EPOCHS) for e in (2, 6, 9)] == [0, 1, 2]
    assert [lr_phase(fast, e, EPOCHS) for e in (0, 1, 2)] == [0, 1, 2]
    assert lr_phase(trial(3, "nonesuch", [1.0], done), 0, EPOCHS) is None


def late_decayer_study() -> optuna.Study:
    """Fast-decaying trials look good at epoch 3; slow ones look worse there, end better."""
    study = optuna.create_study()
    done = optuna.trial.TrialState.COMPLETE
    for i in range(4):
        study.add_trial(trial(i, "exponential", [1.0, 0.5, 0.4, 0.38] + [0.37 + i / 100] * 6,
                              done, **{"exponential.gamma": 0.2}))
    for i in range(4):
        study.add_trial(trial(4 + i, "cosine", [1.2, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.25,
                                                0.2 + i / 100], done))
    return study


def test_a_late_decayer_is_judged_against_its_peers() -> None:
    study = late_decayer_study()
    running = optuna.trial.TrialState.RUNNING
    # a cosine trial slightly better than its cosine peers at epoch 3, worse than the decayed
    new = trial(8, "cosine", [1.1, 0.85, 0.75, 0.65], running)
    plain = make_pruner(PrunerSpec(name="median"), EPOCHS)
    aware = make_pruner(PrunerSpec(name="progress_median"), EPOCHS)
    assert isinstance(aware, ProgressMedianPruner)
    assert plain.prune(study, new)  # the plain rule compares it with decayed schedules
    assert not aware.prune(study, new)
    bad = trial(9, "cosine", [1.3, 1.2, 1.1, 1.0], running)  # worse than its own peers
    assert aware.prune(study, bad)


@pytest.mark.parametrize("n_complete", [0, 2])
def test_too_few_peers_fall_back_to_the_plain_rule(n_complete: int) -> None:
    study = optuna.create_study()
    done = optuna.trial.TrialState.COMPLETE
    for i in range(6):
        study.add_trial(trial(i, "exponential", [1.0, 0.5, 0.4, 0.38, 0.37], done,
                              **{"exponential.gamma": 0.2}))
    for i in range(n_complete):
        study.add_trial(trial(6 + i, "constant", [1.0, 0.9, 0.8, 0.7, 0.6], done))
    new = trial(10, "constant", [1.0, 0.9, 0.8, 0.7], optuna.trial.TrialState.RUNNING)
    aware = ProgressMedianPruner(EPOCHS, n_startup_trials=5, n_warmup_steps=2)
    assert aware.prune(study, new) == make_pruner(PrunerSpec(name="median"), EPOCHS).prune(
        study, new)
