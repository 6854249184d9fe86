"""lrtune with other tools: ``lightning`` (a callback and ``configure_optimizers``'s dict),
``transformers`` (a ``TrainerCallback`` and ``Trainer(optimizers=...)``) and ``wandb`` (each
trial one Weights & Biases run, from lrtune's workers or your own loop).

Each module imports its tool; this one imports none. Here: the per-trial log lrtune's own
workers write to, a no-op unless ``LRTUNE_WANDB_PROJECT`` names a W&B project.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, Protocol

log = logging.getLogger("lrtune.integrations")
ENV_WANDB_PROJECT = "LRTUNE_WANDB_PROJECT"


class TrialLog(Protocol):
    """Where a worker's trial goes besides lrtune's database: each epoch, then one ending.
    ``state``: COMPLETE, PRUNED, FAIL, or UNFINISHED (handed back, or the worker's database
    went away: the trial runs again)."""

    def epoch(self, epoch: int, value: float, lr: float, metrics: Mapping[str, float]
              ) -> None: ...
    def end(self, state: str, value: float | None, reason: str | None) -> None: ...


class NoLog:
    def epoch(self, epoch: int, value: float, lr: float, metrics: Mapping[str, float]
              ) -> None:
        pass

    def end(self, state: str, value: float | None, reason: str | None) -> None:
        pass


NO_LOG = NoLog()


def trial_log(study: str, number: int, config: Mapping[str, Any],
              params: Mapping[str, Any], **extra: Any) -> TrialLog:
    """The log of one trial of a worker: a W&B run when ``LRTUNE_WANDB_PROJECT`` is set (wandb
    is imported only then), else nothing. A run that cannot start is logged and skipped: the
    trial trains all the same."""
    project = os.environ.get(ENV_WANDB_PROJECT, "").strip()
    if not project:
        return NO_LOG
    try:
        from lrtune_worker.integrations.wandb import WandbTrialLog

        return WandbTrialLog.start(project, study, number, config, params, **extra)
    except Exception as error:  # noqa: BLE001 - logging must never fail a trial
        log.warning("study %s trial %d: no W&B run (%s: %s)", study, number,
                    type(error).__name__, error)
        return NO_LOG
