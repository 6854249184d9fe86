"""Hugging Face transformers: train a leased trial with ``Trainer`` (``pip install
'lrtune[transformers]'``).

    args = TrainingArguments(output_dir=..., num_train_epochs=trial.epochs,
                             eval_strategy="epoch", save_strategy="no", report_to="none")
    spe = hf_steps_per_epoch(args, len(train_set))
    trainer = Trainer(model=model, args=args, train_dataset=train_set, eval_dataset=val_set,
                      optimizers=hf_optimizers(trial, model, spe),
                      callbacks=[LrtuneTrainerCallback(trial)])
    trainer.train()

``hf_optimizers`` is the trial's optimizer and schedule: ``Trainer`` steps the schedule after
every optimizer step (``lr_scheduler.step()``), logs its ``get_last_lr()`` and saves its
``state_dict()`` with a checkpoint. ``LrtuneTrainerCallback`` reports each epoch's evaluation
through ``trial.report`` (which takes the step across the epoch's end, as in your own loop),
stops training when the study prunes the trial, and completes the trial at the end.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from lrtune.leasing import TrialPruned

if TYPE_CHECKING:
    from lrtune.leasing import Trial

# Trainer's own numbers in each evaluation's metrics: not reported
NOT_METRICS = ("epoch", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second")


def hf_steps_per_epoch(args: TrainingArguments, train_size: int) -> int:
    """Optimizer steps per epoch of ``Trainer`` on one process over ``train_size`` examples:
    its batches (``dataloader_drop_last`` drops a short one) over the gradient accumulation."""
    batch = args.train_batch_size
    batches = train_size // batch if args.dataloader_drop_last else math.ceil(train_size / batch)
    accumulate = args.gradient_accumulation_steps
    return max(batches // accumulate + int(batches % accumulate > 0), 1)


def hf_optimizers(trial: Trial, model: Any, steps_per_epoch: int | None = None
                  ) -> tuple[Any, Any]:
    """``Trainer(optimizers=...)``: the trial's optimizer over ``model``'s trainable
    parameters and its schedule (``steps_per_epoch``: see ``hf_steps_per_epoch``; default the
    study's)."""
    optimizer, scheduler = trial.hf_optimizers(model, steps_per_epoch)
    return optimizer, scheduler


def monitor_of(objective: str) -> str:
    """The evaluation metric that is the study's objective: ``eval_loss`` for ``val_loss`` or
    ``loss``, else ``eval_`` + the objective."""
    if objective in ("val_loss", "loss"):
        return "eval_loss"
    return objective if objective.startswith("eval_") else f"eval_{objective}"


class LrtuneTrainerCallback(TrainerCallback):
    """Reports ``monitor`` of each epoch's evaluation (default: see ``monitor_of``) with the
    other evaluation metrics; a pruned trial (or a non-finite value, pruned ``diverged``) stops
    training (``pruned`` is then True). At the end of training the trial is completed with the
    last value (``complete=False``: leave it to you). Needs ``eval_strategy="epoch"``."""

    def __init__(self, trial: Trial, monitor: str | None = None, complete: bool = True) -> None:
        self.trial = trial
        self.monitor = monitor or monitor_of(trial.objective)
        self.complete = complete
        self.pruned = False

    def on_train_begin(self, args: TrainingArguments, state: TrainerState,
                       control: TrainerControl, **kwargs: Any) -> None:
        if str(getattr(args.eval_strategy, "value", args.eval_strategy)) != "epoch":
            raise ValueError('LrtuneTrainerCallback: set TrainingArguments(eval_strategy="epoch")'
                             ": the schedule's epoch ends are its reports")
        loader = kwargs.get("train_dataloader")
        spe = self.trial.steps_per_epoch
        if loader is not None and spe is not None:
            batches = len(loader)
            accumulate = args.gradient_accumulation_steps
            steps = max(batches // accumulate + int(batches % accumulate > 0), 1)
            if steps != spe:
                raise ValueError(f"the trial's schedule has {spe} steps per epoch but Trainer "
                                 f"takes {steps}: pass hf_steps_per_epoch(args, "
                                 "len(train_dataset)) to hf_optimizers")

    def on_evaluate(self, args: TrainingArguments, state: TrainerState,
                    control: TrainerControl, metrics: dict[str, Any] | None = None,
                    **kwargs: Any) -> None:
        if self.trial.ended is not None or not metrics:
            return
        if self.monitor not in metrics:
            raise KeyError(f"LrtuneTrainerCallback: no metric {self.monitor!r} in the "
                           f"evaluation; there are {sorted(metrics)}")
        epoch = max(round(state.epoch or 0.0) - 1, 0)
        others = {k: float(v) for k, v in metrics.items()
                  if k != self.monitor and k not in NOT_METRICS
                  and isinstance(v, int | float) and not isinstance(v, bool)}
        try:
            self.trial.report(epoch, float(metrics[self.monitor]), **others)
        except TrialPruned:
            self.pruned = True
            control.should_training_stop = True

    def on_train_end(self, args: TrainingArguments, state: TrainerState,
                     control: TrainerControl, **kwargs: Any) -> None:
        if self.complete and self.trial.ended is None and self.trial.last_value is not None:
            self.trial.complete()
