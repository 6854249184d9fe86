"""Third-party tasks (registered through the ``lrtune.tasks`` entry point) that misbehave,
and one that streams its data."""

from __future__ import annotations

from functools import lru_cache

import torch
from lrtune_fault_task_info import NAN, OOM, RAISE, STREAM
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lrtune_worker.tasks import Task
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


@lru_cache(maxsize=1)
def wine() -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's bundled wine (178 samples, 13 features, 3 classes): 142 to train, 36 to
    validate, features standardised on the training part."""
    from sklearn.datasets import load_wine

    data = load_wine()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y, cut = x[order], y[order], 142
    mean, std = x[:cut].mean(0), x[:cut].std(0)
    x = (x - mean) / std
    return TensorDataset(x[:cut], y[:cut]), TensorDataset(x[cut:], y[cut:])


class WineStream(Task):
    """A 13-16-3 MLP on wine, its data served by DataLoaders (no ``data()``): validation in
    batches of 16 (16, 16, 4), so its metrics are averaged over uneven batches."""

    info = STREAM
    val_batch_size = 16

    def train_batches(self, batch_size: int, order: torch.Generator) -> DataLoader:
        return DataLoader(wine()[0], batch_size=batch_size, shuffle=True, generator=order)

    def val_batches(self) -> DataLoader:
        return DataLoader(wine()[1], batch_size=self.val_batch_size)

    def model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(13, 16), nn.Tanh(), nn.Linear(16, 3))

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(output, target)

    def metric_tensors(self, output: torch.Tensor, target: torch.Tensor
                       ) -> dict[str, torch.Tensor]:
        return {"val_loss": self.loss(output, target),
                "val_acc": (output.argmax(dim=1) == target).float().mean()}
