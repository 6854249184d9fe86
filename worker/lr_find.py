"""LR range test: train briefly while the LR grows exponentially, read bounds off the loss."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence

import torch

from lrtune.lr_range import (
    MAX_LR,
    MIN_LR,
    STEPS,
    LrBounds,
    RangeTest,
    analyse,
    combine,
    exponential_lrs,
)
from lrtune.optimizers import OptimizerChoice
from lrtune.spec import StudySpec
from lrtune_worker.feed import Feed
from lrtune_worker.schedulers import build_optimizer
from lrtune_worker.tasks import Task, get_task
from lrtune_worker.tasks.base import Batch

log = logging.getLogger("lrtune.worker")


def sweep(task: Task, optimizer: str, device: torch.device, seed: int = 0,
          min_lr: float = MIN_LR, max_lr: float = MAX_LR, steps: int = STEPS,
          batch_size: int | None = None) -> RangeTest:
    """One sweep with ``optimizer`` (its default parameters); stops once the loss blows up."""
    torch.manual_seed(seed)
    feed = Feed(task, device)
    model = task.model().to(device)
    lrs = exponential_lrs(min_lr, max_lr, steps)
    opt = build_optimizer(model.parameters(), OptimizerChoice.build(optimizer, min_lr))
    batches = _endless(feed, batch_size or task.info.batch_size,
                       torch.Generator().manual_seed(seed))
    losses: list[float] = []
    best = math.inf
    model.train()
    for lr in lrs:
        x, y = next(batches)
        for group in opt.param_groups:
            group["lr"] = lr
        loss = task.loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        value = float(loss.detach())
        losses.append(value)
        best = min(best, value)
        if not math.isfinite(value) or value > 10 * best:  # far past divergence: stop paying
            break
    losses += [math.inf] * (len(lrs) - len(losses))
    return analyse(optimizer, lrs, losses)


def _endless(feed: Feed, batch: int, order: torch.Generator) -> Iterator[Batch]:
    """Training batches without end: a tensor task's full batches of one permutation after
    another (a short last batch skipped), a streaming task's epochs one after another."""
    if feed.streams:
        steps = feed.steps_per_epoch(batch)
        while True:
            yield from feed.train(batch, order, steps)
    assert feed.data is not None
    x, y, n = feed.data.x_train, feed.data.y_train, len(feed.data.x_train)
    perm, pos = torch.randperm(n, generator=order), 0
    while True:
        if pos + batch > n:
            perm, pos = torch.randperm(n, generator=order), 0
        idx = perm[pos:pos + batch].to(x.device)
        pos += batch
        yield x[idx], y[idx]


def find_bounds(spec: StudySpec, device: torch.device,
                optimizers: Sequence[str] | None = None,
                progress: Callable[[RangeTest], None] | None = None) -> LrBounds:
    """Sweep each of the space's optimizers; the study searches the union of their ranges."""
    task = get_task(spec.task)
    batch = spec.space.batch_size[0] if spec.space.batch_size else None
    tests = []
    for name in optimizers or spec.space.optimizers:
        test = sweep(task, name, device, seed=spec.seed, batch_size=batch)
        log.info("study %s LR range test %s: %.3g .. %.3g%s", spec.name, name, test.low,
                 test.high, f" ({test.reason})" if test.reason else "")
        tests.append(test)
        if progress is not None:
            progress(test)
    return combine(tests)
