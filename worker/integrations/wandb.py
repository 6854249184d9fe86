"""Weights & Biases: each trial one W&B run, grouped by its study (``pip install
'lrtune[wandb]'``). A run's config holds the trial's params, schedule and optimizer; each epoch
logs the objective's ``value``, the epoch's ``lr`` and the other metrics (x axis ``epoch``); its
summary ends with ``state`` (COMPLETE, PRUNED, FAIL, RELEASED or UNFINISHED), ``value`` and
``reason``.

lrtune's own workers log when ``LRTUNE_WANDB_PROJECT`` is set in their environment (``lrtune
serve`` or ``lrtune worker``). Your own loop, in place of ``with trial:``::

    from lrtune_worker.integrations.wandb import log_trial

    for trial in study.trials():
        with log_trial(trial, project="my-project"):  # also ends the trial as `with trial:`
            ...  # trial.report(...) per epoch, trial.complete(...)

W&B's own settings apply as usual (``WANDB_MODE=offline``, ``WANDB_DIR``, ``WANDB_ENTITY``).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import wandb

from lrtune_worker.integrations import ENV_WANDB_PROJECT

if TYPE_CHECKING:
    from lrtune.leasing import Trial

log = logging.getLogger("lrtune.integrations.wandb")
ENDED_WELL = ("COMPLETE", "PRUNED")  # a W&B run finished with exit code 0; others 1


def run_config(study: str, number: int, config: Mapping[str, Any],
               params: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """A trial's W&B config: ``study``, ``trial`` (its number), ``params`` (as sampled),
    ``schedule``, ``optimizer``, ``batch_size``, and ``extra`` (objective, epochs, seed...)."""
    return {"study": study, "trial": number, "params": dict(params),
            "schedule": config["schedule"], "optimizer": config["optimizer"],
            "batch_size": config.get("batch_size"), **extra}


class WandbTrialLog:
    """One trial's W&B run (a ``TrialLog``). Several may be open at once in one process (a
    worker's pack): each is its own run (``reinit="create_new"``). W&B's errors are logged,
    never raised: a trial does not fail for its log."""

    def __init__(self, run: Any) -> None:
        self.run = run
        self.ended = False

    @classmethod
    def start(cls, project: str, study: str, number: int, config: Mapping[str, Any],
              params: Mapping[str, Any], *, init: Mapping[str, Any] | None = None,
              **extra: Any) -> WandbTrialLog:
        """``init``: more keyword arguments of ``wandb.init`` (``entity``, ``tags``...)."""
        kwargs: dict[str, Any] = {
            "project": project, "group": study, "name": f"{study}-{number}",
            "job_type": "trial", "config": run_config(study, number, config, params, **extra),
            "reinit": "create_new", "settings": wandb.Settings(console="off"), **(init or {})}
        run = wandb.init(**kwargs)
        run.define_metric("epoch")
        run.define_metric("*", step_metric="epoch")  # the charts' x axis
        return cls(run)

    def epoch(self, epoch: int, value: float, lr: float | None,
              metrics: Mapping[str, float]) -> None:
        row: dict[str, Any] = {"epoch": epoch, "value": float(value), **metrics}
        if lr is not None:
            row["lr"] = float(lr)
        try:
            self.run.log(row)  # committed at once: the summary's `value` stays the final one
        except Exception as error:  # noqa: BLE001
            log.warning("W&B run %s: epoch %d not logged: %s", self.run.name, epoch, error)

    def end(self, state: str, value: float | None, reason: str | None) -> None:
        if self.ended:
            return
        self.ended = True
        summary: dict[str, Any] = {"state": state}
        if value is not None and math.isfinite(value):
            summary["value"] = float(value)
        if reason:
            summary["reason"] = reason
        try:
            self.run.summary.update(summary)
            self.run.finish(exit_code=0 if state in ENDED_WELL else 1)
        except Exception as error:  # noqa: BLE001
            log.warning("W&B run %s: not finished: %s", self.run.name, error)


@contextmanager
def log_trial(trial: Trial, project: str | None = None,
              **init: Any) -> Iterator[WandbTrialLog]:
    """Log a leased ``trial`` as one W&B run while the block runs, and end the trial as ``with
    trial:`` does (an error: FAIL; pruned: absorbed; Ctrl-C: handed back). Every
    ``trial.report`` in the block (yours, or a Lightning or Trainer callback's) logs its epoch;
    ``complete``, ``prune`` and ``fail`` its ending. ``project``: default
    ``LRTUNE_WANDB_PROJECT``, then ``WANDB_PROJECT``; ``init``: more ``wandb.init`` arguments."""
    project = (project or os.environ.get(ENV_WANDB_PROJECT)
               or os.environ.get("WANDB_PROJECT") or "lrtune")
    run = WandbTrialLog.start(
        project, str(trial.study["name"]), trial.number, trial.config, trial.params,
        init=init, study_id=trial.study.get("id"), objective=trial.objective,
        epochs=trial.epochs, seed=trial.seed)
    final: dict[str, Any] = {}
    report, complete, prune, fail = trial.report, trial.complete, trial.prune, trial.fail

    def logged_report(epoch: int, value: float, lr: float | None = None,
                      **metrics: float) -> None:
        # the LR report() sends by default: the one the epoch started at
        epoch_lr = lr if lr is not None else getattr(trial, "_epoch_lr", None)
        run.epoch(epoch, value, epoch_lr, metrics)
        report(epoch, value, lr, **metrics)

    def logged_complete(value: float | None = None, **metrics: float) -> None:
        complete(value, **metrics)
        final["value"] = trial.last_value if value is None else float(value)
        if metrics:
            run.run.summary.update({f"final/{k}": float(v) for k, v in metrics.items()})

    def logged_prune(reason: str = "pruned") -> None:
        final["reason"] = reason
        prune(reason)

    def logged_fail(reason: str) -> None:
        final["reason"] = reason
        fail(reason)

    patched = {"report": logged_report, "complete": logged_complete, "prune": logged_prune,
               "fail": logged_fail}
    for name, method in patched.items():
        setattr(trial, name, method)
    try:
        with trial:
            yield run
    finally:
        for name in patched:
            trial.__dict__.pop(name, None)
        state = trial.ended or "UNFINISHED"
        if state == "PRUNED" and "reason" not in final:
            final["reason"] = "pruned"
        run.end(state, final.get("value", trial.last_value), final.get("reason"))
