"""``pack: "auto"``: pick K from the device's free memory and a measured step cost."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import lru_cache

import torch

from lrtune.optimizers import OptimizerChoice
from lrtune.schedules import Schedule
from lrtune.space import TrialConfig
from lrtune.spec import StudySpec
from lrtune_worker.blocking import trial_bytes
from lrtune_worker.device import synchronize
from lrtune_worker.feed import Feed
from lrtune_worker.fused import _Pack, train_step
from lrtune_worker.schedulers import build_optimizer
from lrtune_worker.tasks import get_task
from lrtune_worker.train import train_batch

log = logging.getLogger("lrtune.worker")
GAIN = 1.15  # keep doubling K while trial-steps/s grows by at least this factor
PROBE_STEPS = 3
PROBE_SECONDS = 0.2


def free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
    return info.get("MemAvailable", 2**31)


def _per_second(step: Callable[[], object], device: torch.device) -> float:
    """Calls of ``step`` per second, after one that warms up kernels and allocations: at
    least PROBE_STEPS and PROBE_SECONDS (this is measured once per task and device)."""
    step()
    synchronize(device)
    start, calls = time.perf_counter(), 0
    while calls < PROBE_STEPS or time.perf_counter() - start < PROBE_SECONDS:
        step()
        synchronize(device)
        calls += 1
    return calls / (time.perf_counter() - start)


def _rate(task_name: str, k: int, device: torch.device) -> float:
    """Trial-steps per second of a K-trial fused pack (probe with SGD, constant LR), each
    trial on its own batch, or a streaming task's first batch shared as a pack shares it."""
    task = get_task(task_name)
    feed = Feed(task, device)
    config = TrialConfig(Schedule.build("constant"), OptimizerChoice.build("sgd", 1e-3))
    pack = _Pack(task, [config] * k, list(range(k)), device)
    lr = torch.full((k,), 1e-3, device=device)
    if feed.streams:
        x, y = feed.first_batch(task.info.batch_size)
        return k * _per_second(lambda: train_step(pack, x, y, lr, shared=True), device)
    assert feed.data is not None
    data = feed.data
    idx = torch.randint(0, len(data.x_train), (k, task.info.batch_size), device=device)
    return k * _per_second(lambda: train_step(pack, data.x_train[idx], data.y_train[idx], lr),
                           device)


def _sequential_rate(task_name: str, device: torch.device) -> float:
    """Trial-steps per second of one trial trained alone, as ``train_trial`` steps it."""
    task = get_task(task_name)
    feed = Feed(task, device)
    model = task.model().to(device)
    optimizer = build_optimizer(model.parameters(), OptimizerChoice.build("sgd", 1e-3))
    if feed.streams:
        x, y = feed.first_batch(task.info.batch_size)
        return _per_second(lambda: train_batch(task, model, optimizer, x, y), device)
    assert feed.data is not None
    data = feed.data
    idx = torch.randint(0, len(data.x_train), (task.info.batch_size,), device=device)
    return _per_second(
        lambda: train_batch(task, model, optimizer, data.x_train[idx], data.y_train[idx]), device)


@lru_cache(maxsize=32)
def _auto(task_name: str, device_name: str, cap: int) -> int:
    device = torch.device(device_name)
    task = get_task(task_name)
    # twice a step's working set with the largest optimizer state (measured): the
    # activations' gradients and the step's temporaries come on top of what it keeps
    per_trial = 2 * trial_bytes(task, Feed(task, device).first_batch(task.info.batch_size),
                                "adam")
    by_memory = max(1, int(free_bytes(device) * 0.5 // per_trial))
    best_k, best_rate = 1, _rate(task_name, 1, device)
    k = 2
    while k <= min(cap, by_memory):
        rate = _rate(task_name, k, device)
        if rate < best_rate * GAIN:
            break
        best_k, best_rate = k, rate
        k *= 2
    alone = _sequential_rate(task_name, device)
    if best_rate < alone * GAIN:  # a pack of one trains one at a time (run_pack)
        log.info("auto pack for %s on %s: K=1 (one trial at a time, %.0f trial-steps/s, "
                 "against fused K=%d at %.0f)", task_name, device, alone, best_k, best_rate)
        return 1
    log.info("auto pack for %s on %s: K=%d (%.0f trial-steps/s; memory allows %d, cap %d)",
             task_name, device, best_k, best_rate, by_memory, cap)
    return best_k


def auto_pack(spec: StudySpec, device: torch.device, cap: int) -> int:
    return _auto(spec.task, str(device), cap)
