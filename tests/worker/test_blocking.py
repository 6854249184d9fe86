"""A fused pack on a CPU steps in blocks sized to the cache."""

from __future__ import annotations

import pytest

from lrtune_worker.blocking import BLOCK_BYTES, block_size, blocks, trial_bytes
from lrtune_worker.tasks import Task, get_task
from lrtune_worker.tasks.base import Batch


@pytest.mark.parametrize("k,size,sizes", [(5, 2, [1, 2, 2]), (40, 32, [20, 20]),
                                          (256, 32, [32] * 8), (3, 8, [3]), (1, 1, [1])])
def test_blocks_cover_the_pack_in_order_as_evenly_as_possible(k: int, size: int,
                                                              sizes: list[int]) -> None:
    got = blocks(k, size)
    assert [len(b) for b in got] == sizes
    assert [i for b in got for i in b] == list(range(k))


def first(task: Task, batch_size: int) -> Batch:
    data = task.data()
    return data.x_train[:batch_size], data.y_train[:batch_size]


def test_a_trials_working_set_counts_weights_gradients_state_and_saved_activations() -> None:
    task = get_task("digits-mlp")
    weights = sum(p.numel() * 4 for p in task.model().parameters())
    sgd = trial_bytes(task, first(task, 64), "sgd")
    assert trial_bytes(task, first(task, 64), "momentum") - sgd == weights  # one buffer
    assert trial_bytes(task, first(task, 64), "adam") - sgd == 2 * weights
    activations = sgd - 2 * weights
    assert trial_bytes(task, first(task, 128), "sgd") - 2 * weights == pytest.approx(
        2 * activations, rel=0.01)


def test_the_block_fits_the_cache_budget_on_a_cpu() -> None:
    digits, charlm = get_task("digits-mlp"), get_task("charlm")
    size = block_size(digits, first(digits, 64), "momentum", 1024)
    per_trial = trial_bytes(digits, first(digits, 64), "momentum")
    assert size & (size - 1) == 0 and size * per_trial <= BLOCK_BYTES < 2 * size * per_trial
    # charlm saves ~30 MB of activations per trial against digits-mlp's ~0.6 MB
    assert block_size(charlm, first(charlm, 32), "momentum", 1024) < size
    assert block_size(digits, first(digits, 64), "momentum", 4) == 4  # never above K
    assert block_size(digits, first(digits, 64), "momentum", 1024, setting=8) == 8


def test_elsewhere_than_a_cpu_the_whole_pack_steps_at_once() -> None:
    task = get_task("digits-mlp")
    x, y = first(task, 64)
    assert block_size(task, (x.to("meta"), y.to("meta")), "adam", 512) == 512
