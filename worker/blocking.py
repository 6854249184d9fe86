"""Cache blocking on a CPU: a large fused pack steps as blocks of trials, each block's working
set (parameters, gradients, optimizer state, saved activations) small enough to stay in cache.

On 2 CPU cores a 128-trial ``digits-mlp`` pack steps 1.4x faster as blocks of 16-64 trials,
and a 16-trial ``charlm`` pack 1.5x faster as blocks of 2-4: every part of the step (batched
matmuls and element-wise passes alike) slows once the stack outgrows the cache. A GPU wants
the whole pack in one batch.
"""

from __future__ import annotations

import torch

from lrtune_worker.stacked_optim import STATE
from lrtune_worker.tasks import Task
from lrtune_worker.tasks.base import Batch

BLOCK_BYTES = 64 * 2**20  # working set of one block (measured sweet spot, see bench/README)
_measured: dict[tuple[type, str, str, int], int] = {}


def trial_bytes(task: Task, batch: Batch, optimizer: str) -> int:
    """One trial's working set in a step: parameters, gradients and optimizer state, plus the
    activations autograd saves for one ``batch`` (measured once by a forward of it)."""
    key = (type(task), task.info.name, optimizer, len(batch[0]))
    if key not in _measured:
        with torch.random.fork_rng(devices=[]):  # the model's initialisation draws
            _measured[key] = _working_set(task, batch, optimizer)
    return _measured[key]


def _working_set(task: Task, batch: Batch, optimizer: str) -> int:
    x, y = batch
    model = task.model().to(x.device)
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = [0]

    def count(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.untyped_storage().data_ptr() not in weights:  # counted once, below
            saved[0] += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(count, lambda tensor: tensor):
        task.loss(model(x), y)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    return size * (2 + len(STATE[optimizer])) + saved[0]


def block_size(task: Task, batch: Batch, optimizer: str, k: int, setting: int = 0) -> int:
    """Trials per block: ``setting`` when positive; else, on a CPU, the largest power of two
    whose working set (on a training ``batch`` on the pack's device) fits ``BLOCK_BYTES``; on
    other devices the whole pack."""
    if setting > 0:
        return min(setting, k)
    if batch[0].device.type != "cpu":
        return k
    fits = max(1, BLOCK_BYTES // trial_bytes(task, batch, optimizer))
    return min(k, 1 << (fits.bit_length() - 1))


def blocks(k: int, size: int) -> list[range]:
    """``k`` trials in contiguous blocks of at most ``size``, as even as possible (blocks of
    one size compile once)."""
    count = -(-k // max(1, size))
    bounds = [k * b // count for b in range(count + 1)]
    return [range(bounds[b], bounds[b + 1]) for b in range(count)]
