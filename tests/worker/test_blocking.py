"""A fused pack on a CPU steps in blocks sized to the cache."""

from __future__ import annotations

import pytest
import torch

from lrtune_worker.blocking import BLOCK_BYTES, block_size, blocks, trial_bytes
from lrtune_worker.tasks import get_task


@pytest.mark.parametrize("k,size,sizes", [(5, 2, [1, 2, 2]), (40, 32, [20, 20]),
                                          (256, 32, [32] * 8), (3, 8, [3]), (1, 1, [1])])
def test_blocks_cover_the_pack_in_order_as_evenly_as_possible(k: int, size: int,
                                                              sizes: list[int]) -> None:
    got = blocks(k, size)
    assert [len(b) for b in got] == sizes
    assert [i for b in got for i in b] == list(range(k))


def test_a_trials_working_set_counts_weights_gradients_state_and_saved_activations() -> None:
    task = get_task("digits-mlp")
    data = task.data()
    weights = sum(p.numel() * 4 for p in task.model().parameters())
    sgd = trial_bytes(task, data, "sgd", 64)
    assert trial_bytes(task, data, "momentum", 64) - sgd == weights  # one buffer
    assert trial_bytes(task, data, "adam", 64) - sgd == 2 * weights
    activations = sgd - 2 * weights
    assert trial_bytes(task, data, "sgd", 128) - 2 * weights == pytest.approx(2 * activations,
                                                                             rel=0.01)


def test_the_block_fits_the_cache_budget_on_a_cpu() -> None:
    digits, charlm = get_task("digits-mlp"), get_task("charlm")
    size = block_size(digits, digits.data(), "momentum", 64, 1024)
    per_trial = trial_bytes(digits, digits.data(), "momentum", 64)
    assert size & (size - 1) == 0 and size * per_trial <= BLOCK_BYTES < 2 * size * per_trial
    # charlm saves ~30 MB of activations per trial against digits-mlp's ~0.6 MB
    assert block_size(charlm, charlm.data(), "momentum", 32, 1024) < size
    assert block_size(digits, digits.data(), "momentum", 64, 4) == 4  # never above K
    assert block_size(digits, digits.data(), "momentum", 64, 1024, setting=8) == 8


def test_elsewhere_than_a_cpu_the_whole_pack_steps_at_once() -> None:
    task = get_task("digits-mlp")
    assert block_size(task, task.data().to(torch.device("meta")), "adam", 64, 512) == 512
