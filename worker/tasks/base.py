"""What a training task gives the trainer: its data (tensors, or streamed batches), a model, a
loss and metrics."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sized
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import vmap

from lrtune.tasks import TaskInfo

Batch = tuple[torch.Tensor, torch.Tensor]  # inputs, targets; the first dimension is samples


@dataclass(frozen=True)
class TaskData:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor

    def to(self, device: torch.device) -> TaskData:
        return TaskData(*(t.to(device) for t in (self.x_train, self.y_train, self.x_val,
                                                 self.y_val)))


class TensorBatches:
    """``x, y`` in a permutation drawn from ``order`` as iteration starts, ``batch_size``
    samples at a time (the last batch may be smaller); ``len()``: the number of batches."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                 order: torch.Generator) -> None:
        self.x, self.y, self.batch_size, self.order = x, y, batch_size, order

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        perm = torch.randperm(len(self.x), generator=self.order).to(self.x.device)
        for start in range(0, len(perm), self.batch_size):
            idx = perm[start:start + self.batch_size]
            yield self.x[idx], self.y[idx]


class Task:
    """Base of every task; subclasses set ``info`` and implement model, loss, and either
    ``data`` (the whole data set as tensors) or the streaming methods.

    Streaming: a task whose data do not fit in tensors overrides ``train_batches`` (one epoch
    of ``(x, y)`` training batches: a ``torch.utils.data.DataLoader``, or any iterable),
    ``val_batches`` (the validation set in batches) and, unless ``train_batches`` returns
    something with a ``len()`` (a DataLoader does), ``steps_per_epoch``. The trainer moves each
    batch to its device, and takes exactly ``steps_per_epoch`` batches an epoch (schedules are
    fractions of training, so the total is needed up front): fewer or more fail the trial. A
    fused pack reads them once per step for all its trials: every trial of the pack trains on
    the same batches, in the order drawn from its first trial's seed.

    Metrics over validation batches: each metric of ``metric_tensors`` (or ``metrics``) is
    computed per batch and averaged weighted by the batch's samples (``len(target)``),
    ``Σ_b n_b·m_b / Σ_b n_b``; for a metric that is a mean over samples (a mean loss,
    accuracy) this equals the metric of the whole validation set in one pass. One batch (a
    tensor task's validation) gives its metrics as they are. ``train_loss`` is the mean of the
    epoch's batch losses, unweighted.
    """

    info: TaskInfo

    def data(self) -> TaskData:
        raise NotImplementedError

    def train_batches(self, batch_size: int, order: torch.Generator) -> Iterable[Batch]:
        """One epoch of training batches. ``order`` is seeded from the trial's seed and goes on
        from epoch to epoch: draw the shuffle from it (``DataLoader(..., shuffle=True,
        generator=order)``) and the trial is reproducible. Default: ``data()``'s training
        tensors in a permutation drawn from ``order``."""
        data = self.data()
        return TensorBatches(data.x_train, data.y_train, batch_size, order)

    def val_batches(self) -> Iterable[Batch]:
        """The validation set in batches, the same ones at every call (a fused pack on a CPU
        reads it once per block). Default: ``data()``'s validation tensors, one batch."""
        data = self.data()
        return [(data.x_val, data.y_val)]

    def steps_per_epoch(self, batch_size: int) -> int:
        """Batches (optimizer steps) in one epoch of ``train_batches(batch_size, ...)``:
        ``ceil(len(x_train) / batch_size)`` for a tensor task, else ``len()`` of what
        ``train_batches`` returns; a task streaming from a plain iterable must override this."""
        if not self.streams_training():
            return math.ceil(len(self.data().x_train) / batch_size)
        batches = self.train_batches(batch_size, torch.Generator())
        if isinstance(batches, Sized):
            return len(batches)
        raise TypeError(f"task {self.info.name!r}: train_batches gives an iterable without "
                        "len(); override steps_per_epoch(batch_size) to say how many batches "
                        "an epoch has")

    def streams_training(self) -> bool:
        """Its training batches come from its own ``train_batches`` (not ``data()``'s)."""
        return type(self).train_batches is not Task.train_batches

    def streams_validation(self) -> bool:
        """Its validation batches come from its own ``val_batches`` (not ``data()``'s)."""
        return type(self).val_batches is not Task.val_batches

    def model(self) -> nn.Module:
        """A freshly initialised model; the trainer seeds torch before calling this."""
        raise NotImplementedError

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def metric_tensors(self, output: torch.Tensor, target: torch.Tensor
                       ) -> dict[str, torch.Tensor]:
        """Validation metrics of one batch as 0-d tensors; must include every name in
        ``info.metrics`` but train_loss. Torch operations only: a fused pack computes them for
        many trials at once under ``vmap`` and reads them back from the device in one
        transfer. Averaged over batches as the class docstring says."""
        return {"val_loss": self.loss(output, target)}

    def metrics(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        """Validation metrics of one trial on one batch. A task may override this instead of
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
