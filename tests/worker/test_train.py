import optuna
import pytest
import torch

from lrtune.optimizers import OptimizerChoice
from lrtune.schedules import Schedule
from lrtune.space import TrialConfig
from lrtune.spec import StudySpec
from lrtune_worker.runner import run_trial
from lrtune_worker.tasks import get_task
from lrtune_worker.train import train_trial

CPU = torch.device("cpu")


def config(family: str = "cosine", lr: float = 0.01, opt: str = "sgd", **params) -> TrialConfig:
    return TrialConfig(Schedule.build(family, params), OptimizerChoice.build(opt, lr))


def test_linreg_learns_and_reports_each_epoch() -> None:
    reports = []

    class Recorder:
        def report(self, epoch, value, lr, metrics):
            reports.append((epoch, value, lr))

        def should_prune(self):
            return False

    result = train_trial(get_task("linreg"), config(lr=0.005), 6, "val_loss", 0, CPU, Recorder())
    assert result.outcome == "complete" and result.epochs_run == 6
    assert [r[0] for r in reports] == list(range(6))
    assert result.values[-1] < result.values[0] / 2
    assert reports[0][2] == 0.005 and reports[-1][2] < 0.005  # cosine decays


def test_training_is_seeded() -> None:
    a = train_trial(get_task("linreg"), config(), 3, "val_loss", 7, CPU)
    b = train_trial(get_task("linreg"), config(), 3, "val_loss", 7, CPU)
    c = train_trial(get_task("linreg"), config(), 3, "val_loss", 8, CPU)
    assert a.values == b.values and a.values != c.values


def test_divergence_ends_the_trial() -> None:
    result = train_trial(get_task("linreg"), config("constant", lr=50.0), 5, "val_loss", 0, CPU)
    assert result.outcome == "diverged" and result.value is None


def test_plateau_uses_the_validation_metric() -> None:
    result = train_trial(get_task("linreg"), config("plateau", lr=0.02, opt="adam", patience=0,
                                                    factor=0.5), 8, "val_loss", 0, CPU)
    assert result.outcome == "complete" and len(result.lrs) == 8


def test_digits_reports_accuracy() -> None:
    result = train_trial(get_task("digits-mlp"), config(lr=0.1, opt="momentum"), 2, "val_acc",
                         0, CPU)
    assert 0.5 < result.metrics["val_acc"] <= 1.0


def test_charlm_trains_a_step() -> None:
    result = train_trial(get_task("charlm"), config("wsd", lr=3e-3, opt="adamw"), 1, "val_loss",
                         0, CPU)
    assert result.outcome == "complete" and result.value < 5.0


def _trial(spec: StudySpec) -> tuple[optuna.Study, optuna.Trial]:
    study = optuna.create_study(direction="minimize")
    return study, study.ask()


def test_runner_marks_divergence_pruned_with_reason() -> None:
    spec = StudySpec(name="x", task="linreg", epochs=3, n_trials=1,
                     space={"families": ["constant"], "optimizers": ["sgd"],
                            "lr": {"low": 40.0, "high": 50.0}})
    _, trial = _trial(spec)
    outcome = run_trial(trial, spec, CPU)
    assert outcome.state == optuna.trial.TrialState.PRUNED
    assert trial.user_attrs["reason"] == "diverged"


def test_runner_turns_task_errors_into_fail_with_reason() -> None:
    spec = StudySpec(name="x", task="linreg", epochs=3, n_trials=1, objective="val_acc")
    _, trial = _trial(spec)
    outcome = run_trial(trial, spec, CPU)
    assert outcome.state == optuna.trial.TrialState.FAIL
    assert "val_acc" in trial.user_attrs["reason"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_trains_on_cuda() -> None:
    result = train_trial(get_task("digits-mlp"), config(lr=0.1, opt="momentum"), 2, "val_loss",
                         0, torch.device("cuda"))
    assert result.outcome == "complete"


def test_a_rung_runs_the_whole_schedule_on_its_share_of_the_steps() -> None:
    """linreg: 8 steps an epoch, 9 epochs = 72 steps; rung 1 of 3 runs 24 (3 epochs), rung 0
    the 16-step floor (2 epochs); digits-mlp's rung 0 ends mid-epoch and says so."""
    from lrtune.horizon import Rung

    steps: list[float | None] = []

    class Counter:
        def report(self, epoch, value, lr, metrics):
            steps.append(metrics.get("epoch_steps"))  # only where an epoch is cut short

        def should_prune(self):
            return False

    linreg = get_task("linreg")
    full = train_trial(linreg, config("polynomial", lr=0.01, power=1.0), 9, "val_loss", 0,
                       CPU)
    linear = config("polynomial", lr=0.01, power=1.0)
    third = train_trial(linreg, linear, 9, "val_loss", 0, CPU, Counter(), rung=Rung(1, 3, 1 / 3))
    assert (full.epochs_run, third.epochs_run) == (9, 3) and steps == [None, None, None]
    # the whole decay in a third of the steps: the LR at the third's last epoch start is
    # the full run's at its epoch 6 (a linear decay: same fraction of the horizon)
    assert third.lrs[2] == pytest.approx(full.lrs[6])
    steps.clear()
    short = train_trial(get_task("digits-mlp"), config(lr=0.05), 10, "val_loss", 0, CPU,
                        Counter(), rung=Rung(0, 3, 1 / 9))  # 230 steps / 9: 26 = 23 + 3
    assert short.epochs_run == 2 and steps == [None, 3.0]
    assert short.metrics["epoch_steps"] == 3 and short.outcome == "complete"
    for fixed_length in (config("onecycle", lr=0.05), config("polynomial", lr=0.05)):
        run = train_trial(get_task("digits-mlp"), fixed_length, 10, "val_loss", 0, CPU,
                          rung=Rung(0, 3, 1 / 9))  # no step past the rung's 26
        assert run.outcome == "complete" and run.epochs_run == 2
