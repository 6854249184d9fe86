"""Torch objects for a trial leased over HTTP (``lrtune.Trial.optimizer`` and ``scheduler``):
the same optimizer and schedule lrtune's own workers train with."""

from __future__ import annotations

from typing import Any

from torch.optim import Optimizer

from lrtune.space import TrialConfig
from lrtune_worker.schedulers import ScheduleDriver, build_optimizer, build_scheduler


def build_trial_optimizer(params: Any, config: dict[str, Any]) -> Optimizer:
    return build_optimizer(params, TrialConfig.from_dict(config).optimizer)


class BatchStepper:
    """What the user's loop steps after each optimizer step (the shape of a torch
    scheduler: ``step()``, ``get_last_lr()``, ``state_dict()``); the step that crosses an
    epoch's end is taken by ``Trial.report`` with the epoch's metric."""

    def __init__(self, driver: ScheduleDriver, optimizer: Optimizer) -> None:
        self.driver, self.optimizer = driver, optimizer

    def step(self) -> None:
        self.driver.after_batch()

    def get_last_lr(self) -> list[float]:
        return [float(group["lr"]) for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"batches": self.driver.batches, "metrics": list(self.driver.metrics),
                "scheduler": self.driver.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.driver.batches = int(state["batches"])
        self.driver.metrics[:] = state["metrics"]
        self.driver.scheduler.load_state_dict(state["scheduler"])


class TrialSchedule:
    """The schedule of one leased trial: ``batch_stepper`` for the loop, ``after_epoch`` for
    ``Trial.report``."""

    def __init__(self, driver: ScheduleDriver, optimizer: Optimizer) -> None:
        self.driver, self.optimizer = driver, optimizer
        self.batch_stepper = BatchStepper(driver, optimizer)

    def after_epoch(self, metric: float) -> None:
        self.driver.after_epoch(metric)

    def optimizer_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


def build_trial_scheduler(optimizer: Optimizer, config: dict[str, Any], epochs: int,
                          steps_per_epoch: int) -> TrialSchedule:
    schedule = TrialConfig.from_dict(config).schedule
    driver = build_scheduler(optimizer, schedule, epochs * steps_per_epoch, steps_per_epoch)
    return TrialSchedule(driver, optimizer)
