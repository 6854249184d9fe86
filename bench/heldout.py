"""The benchmark's held-out tasks, tuned on nothing.

``cancer-mlp``: an MLP 30-64-64-2 on scikit-learn's bundled breast-cancer data (standardised
features, a fixed 80/20 split). ``synth-mlp``: an MLP 40-128-128-4 on 3,000 points of
scikit-learn's ``make_classification`` (generated, fixed seed), added after the ladder's
stepping fix, when ``cancer-mlp``'s results had been seen. They exist for
bench/search_quality.py alone, registered in the benchmark's process: no method's constants
were chosen by looking at them (they were frozen in a commit before each one's first run).
``synth6-mlp``: an MLP 20-48-48-48-6 on 2,000 generated points in 6 classes, noisier, added
with the two-rung ladder (``tpe+horizon2``), when ``synth-mlp``'s results had been seen.
"""

from __future__ import annotations

from collections.abc import Callable
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


SYNTH = "synth-mlp"
SYNTH_INFO = TaskInfo(SYNTH, "MLP 40-128-128-4 on 3,000 generated points, 4 classes "
                      "(benchmark only).", INFO.metrics, batch_size=64, batch_sizes=(32, 64, 128),
                      default_epochs=10)


SYNTH6 = "synth6-mlp"
SYNTH6_INFO = TaskInfo(SYNTH6, "MLP 20-48-48-48-6 on 2,000 generated points, 6 classes "
                       "(benchmark only).", INFO.metrics, batch_size=32,
                       batch_sizes=(16, 32, 64), default_epochs=10)


@lru_cache(maxsize=1)
def _data() -> TaskData:
    from sklearn.datasets import load_breast_cancer

    cancer = load_breast_cancer()
    return _split(cancer.data, cancer.target)


@lru_cache(maxsize=1)
def _synth_data() -> TaskData:
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=3000, n_features=40, n_informative=16, n_redundant=8,
                               n_classes=4, flip_y=0.02, random_state=0)
    return _split(x, y)


@lru_cache(maxsize=1)
def _synth6_data() -> TaskData:
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=2000, n_features=20, n_informative=12, n_redundant=4,
                               n_classes=6, n_clusters_per_class=2, class_sep=0.8, flip_y=0.05,
                               random_state=6)
    return _split(x, y)


def _split(features: object, labels: object) -> TaskData:
    """A fixed 80/20 split, features standardised by the training part."""
    x = torch.tensor(features, dtype=torch.float32)
    y = torch.tensor(labels, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    cut = int(0.8 * len(x))
    mean, std = x[:cut].mean(dim=0), x[:cut].std(dim=0)
    x = (x - mean) / std
    return TaskData(x[:cut], y[:cut], x[cut:], y[cut:])


class HeldOutMLP(DigitsMLP):
    """A classifier as ``digits-mlp`` is (its loss and metrics), on other data: ``load``
    gives the data, ``widths`` the layers (ReLU between them)."""

    widths: tuple[int, ...] = ()
    load: Callable[[], TaskData]

    def data(self) -> TaskData:
        return type(self).load()

    def model(self) -> nn.Module:
        layers: list[nn.Module] = []
        for n_in, n_out in zip(self.widths, self.widths[1:], strict=False):
            layers += [nn.Linear(n_in, n_out), nn.ReLU()]
        return nn.Sequential(*layers[:-1])


def held_out(info: TaskInfo, widths: tuple[int, ...], load: Callable[[], TaskData]
             ) -> type[HeldOutMLP]:
    return type(info.name, (HeldOutMLP,), {"info": info, "widths": widths,
                                           "load": staticmethod(load)})


def register() -> None:
    """Make the tasks known to lrtune's spec and trainer in this process."""
    for task in (held_out(INFO, (30, 64, 64, 2), _data),
                 held_out(SYNTH_INFO, (40, 128, 128, 4), _synth_data),
                 held_out(SYNTH6_INFO, (20, 48, 48, 48, 6), _synth6_data)):
        core_tasks.BUILTIN_TASKS[task.info.name] = task.info
        worker_tasks.BUILTIN[task.info.name] = task
