"""A task's batches on the device a trainer trains on, and metrics averaged over batches."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

import torch

from lrtune_worker.tasks import Task
from lrtune_worker.tasks.base import Batch, TensorBatches

Value = TypeVar("Value", float, torch.Tensor)
PROBE_SEED = 0  # the order of a streaming task's probe batch (same on every worker)


class Feed:
    """A task's batches on ``device``. A tensor task's data are moved there once and sliced as
    ``Task.train_batches`` slices them; a streaming task's batches are moved there one by one,
    exactly ``steps_per_epoch`` training batches an epoch (ValueError otherwise)."""

    def __init__(self, task: Task, device: torch.device) -> None:
        self.task, self.device = task, device
        self.streams = task.streams_training()
        tensors = not (self.streams and task.streams_validation())
        self.data = task.data().to(device) if tensors else None

    def steps_per_epoch(self, batch_size: int) -> int:
        if self.data is not None and not self.streams:  # data() read once, as before
            return math.ceil(len(self.data.x_train) / batch_size)
        return self.task.steps_per_epoch(batch_size)

    def train(self, batch_size: int, order: torch.Generator, steps: int) -> Iterable[Batch]:
        """One epoch of ``steps`` training batches, the shuffle drawn from ``order``."""
        if self.data is not None and not self.streams:
            return TensorBatches(self.data.x_train, self.data.y_train, batch_size, order)
        return self._moved(self.task.train_batches(batch_size, order), steps)

    def val(self) -> Iterator[Batch]:
        if self.data is not None and not self.task.streams_validation():
            return iter([(self.data.x_val, self.data.y_val)])
        return self._moved(self.task.val_batches(), None)

    def first_batch(self, batch_size: int) -> Batch:
        """A training batch for probes (working set, step rate): the first ``batch_size``
        training samples of a tensor task, a streaming task's first batch in a fixed order."""
        if self.data is not None and not self.streams:
            return self.data.x_train[:batch_size], self.data.y_train[:batch_size]
        order = torch.Generator().manual_seed(PROBE_SEED)
        for x, y in self.task.train_batches(batch_size, order):
            return x.to(self.device), y.to(self.device)
        raise ValueError(f"task {self.task.info.name!r} gave no training batches")

    def _moved(self, batches: Iterable[Batch], steps: int | None) -> Iterator[Batch]:
        """``batches`` on the device; ``steps``: exactly so many (None: validation, one or
        more)."""
        count = 0
        for x, y in batches:
            count += 1
            if steps is not None and count > steps:
                raise ValueError(f"task {self.task.info.name!r} gave more training batches in "
                                 f"an epoch than its steps_per_epoch ({steps})")
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        if steps is not None and count < steps:
            raise ValueError(f"task {self.task.info.name!r} gave {count} training batches in "
                             f"an epoch, fewer than its steps_per_epoch ({steps})")
        if count == 0:
            raise ValueError(f"task {self.task.info.name!r} gave no validation batches")


class MetricMean(Generic[Value]):
    """Metrics averaged over batches, each weighted by its samples: ``Σ n_b·m_b / Σ n_b``
    (in float64). One batch's metrics come back as they are."""

    def __init__(self) -> None:
        self.first: dict[str, Value] = {}
        self.sums: dict[str, Value] = {}
        self.samples = 0
        self.batches = 0

    def add(self, values: dict[str, Value], samples: int) -> None:
        weighted = {name: _weighted(value, samples) for name, value in values.items()}
        self.sums = {name: self.sums[name] + value for name, value in weighted.items()} \
            if self.batches else weighted
        self.first = self.first if self.batches else values
        self.samples += samples
        self.batches += 1

    def mean(self) -> dict[str, Value]:
        if self.batches == 0:
            raise ValueError("no batches to average")
        if self.batches == 1:  # exactly the one-pass value, not n·m/n
            return self.first
        return {name: total / self.samples for name, total in self.sums.items()}


def _weighted(value: Value, samples: int) -> Value:
    if isinstance(value, torch.Tensor):
        return value.double() * samples
    return float(value) * samples
