"""What a training task gives the trainer: data tensors, a model, a loss and metrics."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lrtune.tasks import TaskInfo


@dataclass(frozen=True)
class TaskData:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor

    def to(self, device: torch.device) -> TaskData:
        return TaskData(*(t.to(device) for t in (self.x_train, self.y_train, self.x_val,
                                                 self.y_val)))


class Task:
    """Base of every task; subclasses set ``info`` and implement data and model."""

    info: TaskInfo

    def data(self) -> TaskData:
        raise NotImplementedError

    def model(self) -> nn.Module:
        """A freshly initialised model; the trainer seeds torch before calling this."""
        raise NotImplementedError

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def metrics(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        """Validation metrics; must include every name in ``info.metrics`` but train_loss."""
        return {"val_loss": float(self.loss(output, target))}
