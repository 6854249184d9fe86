"""PyTorch side of the catalogue: a schedule as a real ``torch.optim`` scheduler.

Follows ``lrtune.schedules.torch_plan``: built-in classes where one reproduces the pure
formula, ``LambdaLR`` over the formula otherwise.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim import Optimizer, lr_scheduler

from lrtune.optimizers import OPTIMIZERS, OptimizerChoice
from lrtune.schedules import Schedule
from lrtune.schedules.torch_plan import torch_plan


def build_optimizer(parameters: Any, choice: OptimizerChoice) -> Optimizer:
    cls = getattr(torch.optim, OPTIMIZERS[choice.name].torch_class)
    return cls(parameters, lr=choice.lr, **choice.torch_kwargs())  # type: ignore[no-any-return]


class ScheduleDriver:
    """Steps a scheduler the way the pure formula counts: per batch, metrics per epoch.

    The step that crosses into a new epoch is taken after that epoch's metric is known, so
    metric-driven formulas see it exactly as ``ReduceLROnPlateau`` does. Every batch is one
    step, no more: an epoch cut short (a horizon ladder's rung ending mid-epoch) has no step
    held back, and a scheduler with a fixed length (``OneCycleLR``) never steps past it.
    """

    def __init__(self, scheduler: Any, steps_per_epoch: int, metrics: list[float],
                 on_metric: bool) -> None:
        self.scheduler = scheduler
        self.steps_per_epoch = steps_per_epoch
        self.metrics = metrics
        self.on_metric = on_metric
        self.batches = 0
        self.held_back = 0  # boundary steps waiting for the epoch's end

    def after_batch(self) -> None:
        self.batches += 1
        if self.on_metric:
            return
        if self.batches % self.steps_per_epoch:
            self.scheduler.step()
        else:
            self.held_back += 1

    def after_epoch(self, metric: float) -> None:
        self.metrics.append(metric)
        if self.on_metric:
            self.scheduler.step(metric)
            return
        for _ in range(self.held_back):
            self.scheduler.step()
        self.held_back = 0


def build_scheduler(optimizer: Optimizer, schedule: Schedule, total_steps: int,
                    steps_per_epoch: int) -> ScheduleDriver:
    """A torch scheduler for ``schedule`` on ``optimizer`` (whose LR is the base LR)."""
    schedule.check_horizon(total_steps, steps_per_epoch)
    lr0 = float(optimizer.param_groups[0]["lr"])
    T, spe = total_steps, steps_per_epoch
    plan = torch_plan(schedule, T, spe, lr0)
    metrics: list[float] = []
    built = [getattr(lr_scheduler, cls)(optimizer, **kw) for cls, kw in plan.steps]
    scheduler: Any
    if plan.milestone is not None:
        scheduler = lr_scheduler.SequentialLR(optimizer, built, milestones=[plan.milestone])
    elif built:
        scheduler = built[0]
    else:
        fn = schedule.function()
        scheduler = lr_scheduler.LambdaLR(optimizer, lambda t: fn(t, T, spe, lr0, metrics) / lr0)
    return ScheduleDriver(scheduler, spe, metrics, plan.on_metric)
