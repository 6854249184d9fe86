"""PyTorch Lightning: train a leased trial with ``Trainer.fit`` (``pip install
'lrtune[lightning]'``).

    class Model(L.LightningModule):
        def __init__(self, trial): ...
        def configure_optimizers(self):
            return trial_optimizers(self.trial, self)  # the trial's optimizer and schedule

    trainer = L.Trainer(max_epochs=trial.epochs, callbacks=[LrtuneCallback(trial)])
    trainer.fit(model, train_loader, val_loader)

``trial_optimizers`` steps the trial's schedule after every optimizer step (``interval:
"step"``); ``LrtuneCallback`` reports each validation epoch's monitored metric with
``trial.report`` (which takes the step across the epoch's end, as in your own loop), stops the
fit when the study prunes the trial, and completes the trial at the fit's end. Validate once
per epoch (Lightning's default).
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
from torch import Tensor
from torch.optim.lr_scheduler import LRScheduler

from lrtune.leasing import TrialPruned

if TYPE_CHECKING:
    from lrtune.leasing import Trial


class LightningStepper(LRScheduler):
    """A trial's schedule (``trial.scheduler()``'s stepper) as Lightning takes a scheduler: an
    ``LRScheduler`` by type, so that no ``lr_scheduler_step`` override is needed. Its
    ``step()`` is the stepper's, one optimizer step of the schedule; nothing else of
    ``LRScheduler`` runs (its ``__init__`` would step the schedule once more)."""

    def __init__(self, stepper: Any) -> None:  # LRScheduler's own __init__ is not called
        self.stepper = stepper
        self.optimizer = stepper.optimizer

    def step(self, epoch: int | None = None) -> None:
        self.stepper.step()

    def get_last_lr(self) -> list[float | Tensor]:
        return list(self.stepper.get_last_lr())

    def state_dict(self) -> dict[str, Any]:
        return dict(self.stepper.state_dict())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.stepper.load_state_dict(state_dict)


def trainer_steps_per_epoch(module: pl.LightningModule) -> int | None:
    """Optimizer steps per epoch of the fit ``module`` is in (its batches, over the gradient
    accumulation), or None outside a fit."""
    trainer = module._trainer  # noqa: SLF001 - `trainer` raises when there is none
    if trainer is None:
        return None
    trainer.estimated_stepping_batches  # noqa: B018 - loads the train dataloader if not yet
    batches = trainer.num_training_batches
    if not math.isfinite(batches) or batches < 1:
        return None
    return math.ceil(batches / trainer.accumulate_grad_batches)


def trial_optimizers(trial: Trial, module: pl.LightningModule,
                     steps_per_epoch: int | None = None) -> dict[str, Any]:
    """What ``configure_optimizers`` returns: the trial's optimizer over ``module``'s
    parameters and its schedule, stepped after every optimizer step. ``steps_per_epoch``:
    default the fit's own count (batches over gradient accumulation), then the study's."""
    optimizer = trial.optimizer(module.parameters())
    spe = steps_per_epoch or trainer_steps_per_epoch(module) or trial.steps_per_epoch
    stepper = LightningStepper(trial.scheduler(optimizer, spe))
    return {"optimizer": optimizer,
            "lr_scheduler": {"scheduler": stepper, "interval": "step", "frequency": 1,
                             "name": "lrtune"}}


class LrtuneCallback(pl.Callback):
    """Reports ``monitor`` (default: the study's objective) after each validation epoch
    through ``trial.report``, with the other scalar metrics Lightning holds; a pruned trial
    (or a non-finite value, pruned ``diverged``) stops the fit (``pruned`` is then True). At
    the fit's end the trial is completed with the last value (``complete=False``: leave it to
    you). The sanity check's validation is not reported."""

    def __init__(self, trial: Trial, monitor: str | None = None, complete: bool = True) -> None:
        super().__init__()
        self.trial = trial
        self.monitor = monitor or trial.objective
        self.complete = complete
        self.pruned = False

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        interval = trainer.val_check_interval  # a float: of an epoch; an int: batches
        if trainer.check_val_every_n_epoch != 1 or not (
                interval is None or isinstance(interval, float) and interval == 1.0):
            raise ValueError("LrtuneCallback: validate once per epoch (check_val_every_n_epoch"
                             "=1, val_check_interval=1.0): the schedule's epoch ends are its "
                             "reports")
        if trainer.max_epochs != self.trial.epochs:
            warnings.warn(f"Trainer(max_epochs={trainer.max_epochs}) but the study trains "
                          f"{self.trial.epochs} epochs: the schedule spans the study's",
                          stacklevel=2)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.trial.ended is not None:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                   if getattr(v, "numel", lambda: 1)() == 1}
        if self.monitor not in metrics:
            raise KeyError(f"LrtuneCallback: no metric {self.monitor!r} after validation "
                           f"(self.log it in validation_step); there are {sorted(metrics)}")
        value = metrics.pop(self.monitor)
        try:
            self.trial.report(trainer.current_epoch, value, **metrics)
        except TrialPruned:
            self.pruned = True
            trainer.should_stop = True

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.complete and self.trial.ended is None and self.trial.last_value is not None:
            self.trial.complete()
