"""``cancer-mlp``: the benchmark's held-out task, tuned on nothing.

An MLP 30-64-64-2 on scikit-learn's bundled breast-cancer data (standardised features, a fixed
80/20 split). It exists for bench/search_quality.py alone, registered in the benchmark's
process: no method's constants were chosen by looking at it (they were frozen in a commit
before its first run).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn

from lrtune import tasks as core_tasks
from lrtune.tasks import TaskInfo
from lrtune_worker import tasks as worker_tasks
from lrtune_worker.tasks.base import TaskData
from lrtune_worker.tasks.digits import DigitsMLP

NAME = "cancer-mlp"
INFO = TaskInfo(NAME, "MLP 30-64-64-2 on scikit-learn's bundled breast-cancer data "
                "(benchmark only).", {"val_loss": "minimize", "val_acc": "maximize",
                                      "train_loss": "minimize"},
                batch_size=32, batch_sizes=(16, 32, 64), default_epochs=10)


@lru_cache(maxsize=1)
def _data() -> TaskData:
    from sklearn.datasets import load_breast_cancer

    cancer = load_breast_cancer()
    x = torch.tensor(cancer.data, dtype=torch.float32)
    y = torch.tensor(cancer.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    cut = int(0.8 * len(x))
    mean, std = x[:cut].mean(dim=0), x[:cut].std(dim=0)
    x = (x - mean) / std
    return TaskData(x[:cut], y[:cut], x[cut:], y[cut:])


class CancerMLP(DigitsMLP):
    """A classifier as ``digits-mlp`` is (its loss and metrics), on other data."""

    info = INFO

    def data(self) -> TaskData:
        return _data()

    def model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(30, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                             nn.Linear(64, 2))


def register() -> None:
    """Make the task known to lrtune's spec and trainer in this process."""
    core_tasks.BUILTIN_TASKS[NAME] = INFO
    worker_tasks.BUILTIN[NAME] = CancerMLP
