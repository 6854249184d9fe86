"""``digits-mlp``: a 64-256-256-10 MLP on scikit-learn's bundled 8x8 digits."""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn

from lrtune.tasks import BUILTIN_TASKS
from lrtune_worker.tasks.base import Task, TaskData


@lru_cache(maxsize=1)
def _data() -> TaskData:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    cut = int(0.8 * len(x))
    return TaskData(x[:cut], y[:cut], x[cut:], y[cut:])


class DigitsMLP(Task):
    info = BUILTIN_TASKS["digits-mlp"]

    def data(self) -> TaskData:
        return _data()

    def model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                             nn.Linear(256, 10))

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(output, target)

    def metric_tensors(self, output: torch.Tensor, target: torch.Tensor
                       ) -> dict[str, torch.Tensor]:
        return {"val_loss": self.loss(output, target),
                "val_acc": (output.argmax(dim=1) == target).float().mean()}
