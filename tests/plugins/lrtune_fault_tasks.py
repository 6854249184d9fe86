"""Third-party tasks (registered through the ``lrtune.tasks`` entry point) that misbehave."""

from __future__ import annotations

import torch

from lrtune.tasks import TaskInfo
from worker.tasks.linreg import LinReg


def _info(name: str) -> TaskInfo:
    return TaskInfo(name, f"fault injection: {name}", {"val_loss": "minimize"}, batch_size=64)


class Raises(LinReg):
    info = _info("fault-raise")

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise ValueError("task exploded on purpose")


class NaNLoss(LinReg):
    info = _info("fault-nan")

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return super().loss(output, target) * float("nan")


class OutOfMemory(LinReg):
    info = _info("fault-oom")

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
