"""Train one trial: seeded, schedule stepped per batch, metric and LR reported per epoch."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch

from lrtune.horizon import Rung
from lrtune.space import TrialConfig
from lrtune_worker.feed import Feed, MetricMean
from lrtune_worker.schedulers import build_optimizer, build_scheduler
from lrtune_worker.tasks import Task
from lrtune_worker.tasks.base import Batch

Outcome = Literal["complete", "pruned", "diverged"]


class Reporter(Protocol):
    """Receives each epoch's objective value and LR; answers whether to stop early."""

    def report(self, epoch: int, value: float, lr: float, metrics: dict[str, float]) -> None: ...
    def should_prune(self) -> bool: ...


class NullReporter:
    def report(self, epoch: int, value: float, lr: float, metrics: dict[str, float]) -> None:
        pass

    def should_prune(self) -> bool:
        return False


@dataclass
class TrainResult:
    outcome: Outcome
    value: float | None
    epochs_run: int
    values: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    return math.ceil(n_train / batch_size)


def validate(task: Task, model: torch.nn.Module, batches: Iterable[Batch]) -> dict[str, float]:
    """``task.metrics`` over the validation batches, averaged as ``MetricMean`` says."""
    mean = MetricMean[float]()
    with torch.no_grad():
        for x, y in batches:
            mean.add(task.metrics(model(x), y), len(y))
    return mean.mean()


def train_batch(task: Task, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One optimizer step of one trial on a batch; returns the batch loss."""
    loss = task.loss(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


def train_trial(task: Task, config: TrialConfig, epochs: int, objective: str, seed: int,
                device: torch.device, reporter: Reporter | None = None,
                order_seed: int | None = None, rung: Rung | None = None) -> TrainResult:
    """Train ``config`` on ``task`` for ``epochs``; NaN/inf loss ends it as ``diverged``.
    ``seed`` seeds the model's initialisation and the data order; ``order_seed``, when
    given, the data order alone (a fused pack of a streaming task shares one order). A
    horizon ladder's ``rung`` runs the whole schedule on its share of the steps: the last
    epoch may be cut short (it is reported all the same, after its last step)."""
    reporter = reporter or NullReporter()
    torch.manual_seed(seed)
    feed = Feed(task, device)
    model = task.model().to(device)
    batch = config.batch_size or task.info.batch_size
    spe = feed.steps_per_epoch(batch)
    optimizer = build_optimizer(model.parameters(), config.optimizer)
    steps = rung.steps(epochs * spe) if rung is not None else epochs * spe
    epochs = math.ceil(steps / spe)
    driver = build_scheduler(optimizer, config.schedule, steps, spe)
    order = torch.Generator().manual_seed(seed if order_seed is None else order_seed)
    result = TrainResult("complete", None, 0)
    for epoch in range(epochs):
        lr = float(optimizer.param_groups[0]["lr"])
        model.train()
        total = torch.zeros((), device=device)
        taken = min(spe, steps - epoch * spe)
        for x, y in itertools.islice(feed.train(batch, order, spe), taken):
            loss = train_batch(task, model, optimizer, x, y)
            driver.after_batch()
            total += loss.detach()
        train_loss = float(total) / taken
        model.eval()
        metrics = validate(task, model, feed.val())
        metrics["train_loss"] = train_loss
        if taken < spe:  # a rung that ends mid-epoch: the report says how far it went
            metrics["epoch_steps"] = float(taken)
        value = metrics[objective]
        result.epochs_run = epoch + 1
        result.metrics = metrics
        if not (math.isfinite(train_loss) and math.isfinite(value)):
            result.outcome = "diverged"
            return result
        result.values.append(value)
        result.lrs.append(lr)
        result.value = value
        reporter.report(epoch, value, lr, metrics)
        driver.after_epoch(value)
        if epoch < epochs - 1 and reporter.should_prune():
            result.outcome = "pruned"
            return result
    return result
