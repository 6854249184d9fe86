"""Third-party tasks (registered through the ``lrtune.tasks`` entry point) that misbehave."""

from __future__ import annotations

import torch
from lrtune_fault_task_info import NAN, OOM, RAISE

from lrtune_worker.tasks.linreg import LinReg


class Raises(LinReg):
    info = RAISE

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise ValueError("task exploded on purpose")


class NaNLoss(LinReg):
    info = NAN

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return super().loss(output, target) * float("nan")


class OutOfMemory(LinReg):
    info = OOM

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
