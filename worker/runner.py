"""Run one Optuna trial of a study spec: sample, train, and say how it ended."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
import torch

from lrtune import study as names
from lrtune.errors import DatabaseUnavailable
from lrtune.space import SearchSpace, TrialConfig
from lrtune.spec import StudySpec
from lrtune_worker.integrations import NO_LOG, TrialLog, trial_log
from lrtune_worker.tasks import Task, get_task
from lrtune_worker.train import TrainResult, train_trial

LOST_MEANWHILE = "lost: finished under the worker (reaped, or its study deleted)"


class Stopping(Exception):  # noqa: N818 - a signal, not an error
    """Raised between epochs when the worker must stop; the trial is handed back."""


class OptunaReporter:
    """Reports each epoch's value to the trial (pruning, dashboard) and keeps the LR curve.

    ``between_epochs`` runs after each report; it may raise to stop the trial (worker exit).
    ``log`` gets each epoch too (W&B, when enabled).
    """

    def __init__(self, trial: optuna.Trial,
                 between_epochs: Callable[[], None] | None = None,
                 log: TrialLog = NO_LOG) -> None:
        self.trial = trial
        self.between_epochs = between_epochs
        self.log = log
        self.lrs: list[float] = []

    def report(self, epoch: int, value: float, lr: float, metrics: dict[str, float]) -> None:
        self.trial.report(value, epoch)
        self.lrs.append(lr)
        self.log.epoch(epoch, value, lr, metrics)
        if self.between_epochs is not None:
            self.between_epochs()

    def should_prune(self) -> bool:
        return self.trial.should_prune()


@dataclass
class TrialOutcome:
    state: optuna.trial.TrialState
    value: float | None
    reason: str | None
    result: TrainResult | None


SetAttr = Callable[[str, Any], None]


def prepare(trial: optuna.Trial, spec: StudySpec, task: Task,
            set_attr: SetAttr | None = None) -> TrialConfig:
    """Sample the trial's config and record it (and the steps per epoch) on the trial."""
    set_attr = set_attr or trial.set_user_attr
    config = SearchSpace(spec.space, names.direction(spec)).sample(trial)
    batch = config.batch_size or task.info.batch_size
    set_attr(names.ATTR_CONFIG, config.to_dict())
    set_attr(names.ATTR_STEPS_PER_EPOCH, task.steps_per_epoch(batch))
    return config


def trial_seed(spec: StudySpec, trial: optuna.Trial) -> int:
    return names.derived_seed(spec.seed, trial.number)


def open_log(trial: optuna.Trial, spec: StudySpec, config: TrialConfig) -> TrialLog:
    """The trial's log besides the database (a W&B run when enabled, else nothing)."""
    return trial_log(spec.name, trial.number, config.to_dict(), trial.params,
                     task=spec.task, objective=spec.objective, epochs=spec.epochs,
                     seed=trial_seed(spec, trial))


def logged(log: TrialLog, outcome: TrialOutcome) -> TrialOutcome:
    """``outcome``, ended in ``log`` too."""
    log.end(outcome.state.name, outcome.value, outcome.reason)
    return outcome


def unfinished(error: Exception) -> str:
    """Why a trial left unended (it runs again): the reason in its log."""
    return "handed back: worker stopping" if isinstance(error, Stopping) else (
        f"abandoned: {type(error).__name__}")


def failed(trial: optuna.Trial, error: Exception, set_attr: SetAttr | None = None
           ) -> TrialOutcome:
    """A task's own error: FAIL with the reason stored (out-of-memory named as such).
    A trial finished under the worker (reaped as lost, its study deleted) is not written."""
    if isinstance(error, optuna.exceptions.UpdateFinishedTrialError):
        return TrialOutcome(optuna.trial.TrialState.FAIL, None, LOST_MEANWHILE, None)
    kind = "failed"
    if isinstance(error, torch.OutOfMemoryError):
        kind = "out of memory"
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    reason = f"{kind}: {type(error).__name__}: {error}"[:1000]
    try:
        (set_attr or trial.set_user_attr)(names.ATTR_REASON, reason)
    except (optuna.exceptions.UpdateFinishedTrialError, KeyError):
        return TrialOutcome(optuna.trial.TrialState.FAIL, None, LOST_MEANWHILE, None)
    return TrialOutcome(optuna.trial.TrialState.FAIL, None, reason, None)


def outcome_of(trial: optuna.Trial, result: TrainResult, set_attr: SetAttr | None = None
               ) -> TrialOutcome:
    """Record a finished training's metrics and LR curve; divergence is PRUNED ``diverged``."""
    set_attr = set_attr or trial.set_user_attr
    set_attr(names.ATTR_METRICS, result.metrics)
    set_attr(names.ATTR_LR_CURVE, result.lrs)  # once, not a write per epoch
    if result.outcome == "diverged":
        set_attr(names.ATTR_REASON, "diverged")
        return TrialOutcome(optuna.trial.TrialState.PRUNED, None, "diverged", result)
    if result.outcome == "pruned":
        set_attr(names.ATTR_REASON, "pruned")
        return TrialOutcome(optuna.trial.TrialState.PRUNED, result.value, "pruned", result)
    return TrialOutcome(optuna.trial.TrialState.COMPLETE, result.value, None, result)


def run_trial(trial: optuna.Trial, spec: StudySpec, device: torch.device,
              between_epochs: Callable[[], None] | None = None) -> TrialOutcome:
    """Train one trial; divergence is PRUNED ``diverged``, any task error FAIL with its text."""
    log: TrialLog = NO_LOG
    try:
        task = get_task(spec.task)
        config = prepare(trial, spec, task)
        log = open_log(trial, spec, config)
        result = train_trial(task, config, spec.epochs, spec.objective, trial_seed(spec, trial),
                             device, OptunaReporter(trial, between_epochs, log))
    except (Stopping, DatabaseUnavailable) as error:
        log.end("UNFINISHED", None, unfinished(error))
        raise
    except Exception as error:  # the trial's own failure; the worker goes on
        return logged(log, failed(trial, error))
    try:
        return logged(log, outcome_of(trial, result))
    except optuna.exceptions.UpdateFinishedTrialError:
        # Reaped as lost meanwhile (a heartbeat came too late): its re-queued copy runs; the
        # worker's finish is refused and logged, and the worker goes on.
        return logged(log, outcome_of(trial, result, lambda key, value: None))


def objective_for(spec: StudySpec, device: torch.device) -> Any:
    """An ``optimize()`` objective: raises TrialPruned / RuntimeError as Optuna expects."""

    def objective(trial: optuna.Trial) -> float:
        outcome = run_trial(trial, spec, device)
        if outcome.state == optuna.trial.TrialState.PRUNED:
            raise optuna.TrialPruned(outcome.reason)
        if outcome.state == optuna.trial.TrialState.FAIL:
            raise RuntimeError(outcome.reason)
        assert outcome.value is not None
        return outcome.value

    return objective
