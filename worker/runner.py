"""One trial's pieces: its config sampled through Optuna, its outcome from training, and the
Optuna-trial runner of ``lrtune tune`` (``run_trial``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
import torch

from lrtune import study as names
from lrtune.errors import DatabaseUnavailable
from lrtune.horizon import Rung, rung_of
from lrtune.space import SearchSpace, TrialConfig
from lrtune.spec import StudySpec
from lrtune_worker.integrations import NO_LOG, TrialLog, trial_log
from lrtune_worker.source import Slot
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
    set_attr(names.ATTR_CONFIG, config.to_dict())
    set_attr(names.ATTR_STEPS_PER_EPOCH, task.steps_per_epoch(batch_size(config, task)))
    return config


def batch_size(config: TrialConfig, task: Task) -> int:
    return config.batch_size or task.info.batch_size


def trial_seed(spec: StudySpec, trial: optuna.Trial) -> int:
    return names.derived_seed(spec.seed, trial.number)


def open_log(slot: Slot, spec: StudySpec, config: TrialConfig) -> TrialLog:
    """The trial's log besides lrtune's records (a W&B run when enabled, else nothing)."""
    return trial_log(spec.name, slot.number, config.to_dict(), slot.params,
                     task=spec.task, objective=spec.objective, epochs=spec.epochs,
                     seed=slot.seed)


def unfinished(error: Exception) -> str:
    """Why a trial left unended (it runs again): the reason in its log."""
    return "handed back: worker stopping" if isinstance(error, Stopping) else (
        f"abandoned: {type(error).__name__}")


def ending(result: TrainResult, rung: Rung | None = None) -> TrialOutcome:
    """How a finished training ends the trial: divergence is PRUNED ``diverged``; a horizon
    ladder's run below the top rung PRUNED with its value and rung (only full-horizon runs
    can be the study's best)."""
    if result.outcome == "diverged":
        return TrialOutcome(optuna.trial.TrialState.PRUNED, None, "diverged", result)
    if result.outcome == "pruned":
        return TrialOutcome(optuna.trial.TrialState.PRUNED, result.value, "pruned", result)
    if rung is not None and not rung.top:
        return TrialOutcome(optuna.trial.TrialState.PRUNED, result.value, rung.reason(),
                            result)
    return TrialOutcome(optuna.trial.TrialState.COMPLETE, result.value, None, result)


def failure(error: Exception) -> TrialOutcome:
    """A task's own error: FAIL with the reason (out-of-memory named as such). Optuna's
    refusal to write a trial finished under the worker is no failure of the trial: it was
    lost meanwhile (``LOST_MEANWHILE``), and nothing is to be written."""
    if isinstance(error, optuna.exceptions.UpdateFinishedTrialError):
        return TrialOutcome(optuna.trial.TrialState.FAIL, None, LOST_MEANWHILE, None)
    kind = "failed"
    if isinstance(error, torch.OutOfMemoryError):
        kind = "out of memory"
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    reason = f"{kind}: {type(error).__name__}: {error}"[:1000]
    return TrialOutcome(optuna.trial.TrialState.FAIL, None, reason, None)


def record(set_attr: SetAttr, outcome: TrialOutcome) -> None:
    """The trial's user attributes for its outcome: metrics and LR curve (once, not a write
    per epoch) of a training, then the reason of an ending that has one."""
    if outcome.result is not None:
        set_attr(names.ATTR_METRICS, outcome.result.metrics)
        set_attr(names.ATTR_LR_CURVE, outcome.result.lrs)
    if outcome.reason is not None:
        set_attr(names.ATTR_REASON, outcome.reason)


def recorded(trial: optuna.Trial, outcome: TrialOutcome, set_attr: SetAttr | None = None
             ) -> TrialOutcome:
    """``outcome``, its attributes written on ``trial``; a trial finished under the worker
    (reaped as lost, its study deleted) is not written, and its outcome says so when it was a
    failure."""
    if outcome.reason == LOST_MEANWHILE:
        return outcome
    try:
        record(set_attr or trial.set_user_attr, outcome)
    except (optuna.exceptions.UpdateFinishedTrialError, KeyError):
        if outcome.state == optuna.trial.TrialState.FAIL:
            return TrialOutcome(optuna.trial.TrialState.FAIL, None, LOST_MEANWHILE, None)
    return outcome


def failed(trial: optuna.Trial, error: Exception, set_attr: SetAttr | None = None
           ) -> TrialOutcome:
    """``failure(error)``, its reason stored on the trial."""
    return recorded(trial, failure(error), set_attr)


def outcome_of(trial: optuna.Trial, result: TrainResult, set_attr: SetAttr | None = None,
               rung: Rung | None = None) -> TrialOutcome:
    """``ending(result, rung)``, its metrics, LR curve and reason stored on the trial."""
    return recorded(trial, ending(result, rung), set_attr)


def run_trial(trial: optuna.Trial, spec: StudySpec, device: torch.device,
              between_epochs: Callable[[], None] | None = None) -> TrialOutcome:
    """Train one Optuna trial; divergence is PRUNED ``diverged``, any task error FAIL with
    its text (``lrtune tune``'s objective; lrtune's workers run ``run_pack``)."""
    log: TrialLog = NO_LOG
    try:
        task = get_task(spec.task)
        config = prepare(trial, spec, task)
        rung = rung_of(trial) if spec.pruner.name == "horizon" else None
        slot = Slot(trial.number, trial_seed(spec, trial), dict(trial.params), rung)
        log = open_log(slot, spec, config)
        result = train_trial(task, config, spec.epochs, spec.objective, slot.seed, device,
                             OptunaReporter(trial, between_epochs, log), rung=rung)
    except (Stopping, DatabaseUnavailable) as error:
        log.end("UNFINISHED", None, unfinished(error))
        raise
    except Exception as error:  # the trial's own failure; the worker goes on
        outcome = failed(trial, error)
    else:
        outcome = outcome_of(trial, result, rung=rung)
    log.end(outcome.state.name, outcome.value, outcome.reason)
    return outcome


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
