"""What a training task gives the trainer: data tensors, a model, a loss and metrics."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import vmap

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

    def metric_tensors(self, output: torch.Tensor, target: torch.Tensor
                       ) -> dict[str, torch.Tensor]:
        """Validation metrics as 0-d tensors; must include every name in ``info.metrics`` but
        train_loss. Torch operations only: a fused pack computes them for many trials at once
        under ``vmap`` and reads them back from the device in one transfer."""
        return {"val_loss": self.loss(output, target)}

    def metrics(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        """Validation metrics of one trial. A task may override this instead of
        ``metric_tensors``; fused packs then call it once per trial."""
        return {name: float(value) for name, value in self.metric_tensors(output, target).items()}

    def stacked_metrics(self, outputs: torch.Tensor, target: torch.Tensor
                        ) -> list[dict[str, float]]:
        """``metrics`` of every trial whose outputs are stacked in ``outputs``."""
        if not self.has_metric_tensors():
            return [self.metrics(output, target) for output in outputs]
        return metric_rows(self.stacked_metric_tensors(outputs, target))

    def stacked_metric_tensors(self, outputs: torch.Tensor, target: torch.Tensor
                               ) -> dict[str, torch.Tensor]:
        """``metric_tensors`` of every trial stacked in ``outputs``, ``[trials]`` by name."""
        return vmap(self.metric_tensors, in_dims=(0, None))(outputs, target)

    def has_metric_tensors(self) -> bool:
        """Its metrics come from ``metric_tensors`` (not an overridden ``metrics``)."""
        return type(self).metrics is Task.metrics


def metric_rows(values: dict[str, torch.Tensor]) -> list[dict[str, float]]:
    """Per-trial metrics from ``[trials]`` tensors by name, read back in one transfer."""
    names = list(values)
    table = torch.stack([values[name].double() for name in names]).tolist()
    return [dict(zip(names, row, strict=True)) for row in zip(*table, strict=True)]
