"""``linreg``: linear regression by gradient descent on generated data (the textbook case)."""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn

from lrtune.tasks import BUILTIN_TASKS
from lrtune_worker.tasks.base import Task, TaskData

FEATURES = 10
TRAIN, VAL = 512, 256


@lru_cache(maxsize=1)
def _data() -> TaskData:
    gen = torch.Generator().manual_seed(1234)
    scales = torch.logspace(-1, 1, FEATURES)  # uneven feature scales make the LR matter
    x = torch.randn(TRAIN + VAL, FEATURES, generator=gen) * scales
    w = torch.randn(FEATURES, 1, generator=gen)
    y = x @ w + 3.0 + 0.1 * torch.randn(TRAIN + VAL, 1, generator=gen)
    return TaskData(x[:TRAIN], y[:TRAIN], x[TRAIN:], y[TRAIN:])


class LinReg(Task):
    info = BUILTIN_TASKS["linreg"]

    def data(self) -> TaskData:
        return _data()

    def model(self) -> nn.Module:
        return nn.Linear(FEATURES, 1)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(output, target)
