"""Acceptance: K trials trained fused give the per-epoch values, outcomes and final metrics of
the same K trials trained one at a time (same seeds), within float tolerance, including
trials pruned or diverging mid-way."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from lrtune.optimizers import OptimizerChoice
from lrtune.schedules import Schedule
from lrtune.space import TrialConfig
from lrtune_worker.fused import _Stepper, split_pack, train_pack
from lrtune_worker.tasks import Task, get_task
from lrtune_worker.tasks.digits import DigitsMLP as DigitsMLPTask
from lrtune_worker.train import TrainResult, train_trial

CPU = torch.device("cpu")
EPOCHS = 4
RTOL = 1e-4


class ScriptedPruner:
    """Prunes at a fixed epoch (or never): the same decision for both trainers."""

    def __init__(self, at: int | None) -> None:
        self.at, self.epoch, self.seen = at, -1, []

    def report(self, epoch: int, value: float, lr: float, metrics: dict[str, float]) -> None:
        self.epoch = epoch
        self.seen.append((epoch, value, lr))

    def should_prune(self) -> bool:
        return self.at is not None and self.epoch >= self.at


def schedules() -> list[Schedule]:
    return [Schedule.build("cosine", {"eta_min_ratio": 0.01}),
            Schedule.build("step", {"step_size": 0.25, "gamma": 0.5}, warmup={"fraction": 0.2}),
            Schedule.build("plateau", {"patience": 0, "factor": 0.5}),
            Schedule.build("onecycle", {"pct_start": 0.3}),
            Schedule.build("plateau", {"patience": 0, "factor": 0.5}, warmup={})]


LRS = {"sgd": 0.05, "momentum": 0.02, "adam": 3e-3, "adamw": 3e-3, "rmsprop": 1e-3}
CASES = [("linreg", name) for name in LRS] + [
    ("digits-mlp", name) for name in ("sgd", "momentum", "adam", "adamw")]


def configs(optimizer: str) -> list[TrialConfig]:
    base = LRS[optimizer]
    out = []
    for i, schedule in enumerate(schedules()):
        params = {"nesterov": bool(i % 2)} if optimizer == "momentum" else None
        out.append(TrialConfig(schedule, OptimizerChoice.build(
            optimizer, base * (1 + i) / 2, 1e-4 * (i % 2), params)))
    return out


def compare(fused: list[TrainResult], alone: list[TrainResult]) -> None:
    for f, a in zip(fused, alone, strict=True):
        assert f.outcome == a.outcome and f.epochs_run == a.epochs_run
        assert f.values == pytest.approx(a.values, rel=RTOL)
        assert f.lrs == pytest.approx(a.lrs, rel=1e-6)
        for name, value in a.metrics.items():
            assert f.metrics[name] == pytest.approx(value, rel=RTOL, nan_ok=True), name


def check_equivalence(task_name: str, optimizer: str, prune_at: list[int | None],
                      compile_after: float | None = None, device: torch.device = CPU,
                      block: int = 0) -> None:
    task = get_task(task_name)
    cfgs = configs(optimizer)
    seeds = [100 + i for i in range(len(cfgs))]
    if task_name == "linreg" and optimizer == "sgd":  # one trial diverges mid-way
        cfgs[4] = TrialConfig(Schedule.build("constant"), OptimizerChoice.build("sgd", 0.08))
    alone = [train_trial(task, c, EPOCHS, "val_loss", s, device, ScriptedPruner(p))
             for c, s, p in zip(cfgs, seeds, prune_at, strict=True)]
    reporters = [ScriptedPruner(p) for p in prune_at]
    ended: list[int] = []
    fused = train_pack(task, cfgs, EPOCHS, "val_loss", seeds, device, reporters,
                       lambda i, r: ended.append(i), compile_after=compile_after, block=block)
    compare(fused, alone)
    assert sorted(ended) == list(range(len(cfgs)))  # every trial finished exactly once
    assert {a.outcome for a in alone} >= {"complete", "pruned"}
    if task_name == "linreg" and optimizer == "sgd":
        assert alone[4].outcome == "diverged" and fused[4].outcome == "diverged"


@pytest.mark.parametrize("task_name,optimizer", CASES)
def test_fused_equals_sequential(task_name: str, optimizer: str) -> None:
    check_equivalence(task_name, optimizer, [None, 1, None, 2, None])


@pytest.mark.parametrize("task_name,optimizer,compile_after", [
    ("digits-mlp", "adamw", 0.0),  # compiled from the first step
    ("linreg", "momentum", 1e-9),  # eager first epoch, then compiled
])
def test_compiled_step_equals_sequential(task_name: str, optimizer: str, compile_after: float,
                                         caplog: pytest.LogCaptureFixture) -> None:
    """Stopped trials stay masked in the stack until half have stopped (epoch 1 here), then
    the stack is compacted and the step compiled again for the new size."""
    caplog.set_level(logging.INFO, logger="lrtune.worker")
    check_equivalence(task_name, optimizer, [0, 1, None, 1, None], compile_after)
    assert not _Stepper.broken
    if compile_after:
        assert "compiling the fused step: 4 trials" in caplog.text


@pytest.mark.parametrize("task_name,optimizer,compile_after", [
    ("digits-mlp", "momentum", None),
    ("linreg", "rmsprop", 1e-9),  # eager first epoch, then compiled
])
def test_a_pack_stepped_in_blocks_equals_sequential(
        task_name: str, optimizer: str, compile_after: float | None,
        caplog: pytest.LogCaptureFixture) -> None:
    """Blocks of 2, 2 and 1 trials take turns; trials still pruned, diverged and compacted
    within their own block, and the step compiled for the live trials of every block."""
    caplog.set_level(logging.INFO, logger="lrtune.worker")
    check_equivalence(task_name, optimizer, [0, 1, None, 0, None], compile_after, block=2)
    if compile_after:
        assert "compiling the fused step: 3 trials" in caplog.text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("compile_after", [None, 0.0], ids=["eager", "compiled"])
def test_fused_equals_sequential_on_cuda(compile_after: float | None) -> None:
    check_equivalence("digits-mlp", "adamw", [None, 1, None, 2, None], compile_after,
                      torch.device("cuda"))
    assert not _Stepper.broken


def test_training_goes_on_eagerly_where_compiling_fails(tmp_path: Path) -> None:
    """No C++ compiler (as in a slim image): the worker logs why and trains eagerly."""
    code = textwrap.dedent("""
        import logging, torch
        from lrtune.optimizers import OptimizerChoice
        from lrtune.schedules import Schedule
        from lrtune.space import TrialConfig
        from lrtune_worker.fused import train_pack
        from lrtune_worker.tasks import get_task
        logging.basicConfig(level=logging.INFO)
        cfgs = [TrialConfig(Schedule.build("cosine"), OptimizerChoice.build("sgd", lr))
                for lr in (0.01, 0.02)]
        results = train_pack(get_task("linreg"), cfgs, 2, "val_loss", [1, 2],
                             torch.device("cpu"), compile_after=0)
        print([r.outcome for r in results], [r.epochs_run for r in results])
    """)
    env = {**os.environ, "CXX": str(tmp_path / "no-such-compiler"),
           "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "torch.compile of the fused step failed, training eagerly" in done.stderr
    assert done.stdout.strip() == "['complete', 'complete'] [2, 2]"


def test_an_error_of_the_compiled_step_itself_keeps_compiling_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Out of memory (a GPU's, which cannot happen here) is the step's error, not the
    compiler's: it reaches the caller and the process keeps compiling."""
    def out_of_memory(*args: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr("lrtune_worker.fused._compiled", lambda function: out_of_memory)
    cfgs = configs("sgd")[:2]
    with pytest.raises(torch.OutOfMemoryError):
        train_pack(get_task("linreg"), cfgs, 1, "val_loss", [1, 2], CPU, compile_after=0)
    assert not _Stepper.broken


def test_pruned_trials_are_finished_at_once_and_leave_the_stack() -> None:
    task = get_task("linreg")
    cfgs = configs("adam")[:3]
    order: list[tuple[int, int]] = []
    reporters = [ScriptedPruner(0), ScriptedPruner(None), ScriptedPruner(2)]
    train_pack(task, cfgs, EPOCHS, "val_loss", [1, 2, 3], CPU, reporters,
               lambda i, r: order.append((i, r.epochs_run)))
    assert order == [(0, 1), (2, 3), (1, EPOCHS)]


def test_sub_packs_split_by_optimizer_and_batch_size() -> None:
    task = get_task("linreg")
    cfgs = configs("adam")[:2] + configs("sgd")[:2]
    cfgs.append(TrialConfig(cfgs[0].schedule, cfgs[0].optimizer, batch_size=32))
    assert split_pack(cfgs, task) == [[0, 1], [2, 3], [4]]
    with pytest.raises(ValueError, match="one optimizer per pack"):
        train_pack(task, cfgs[1:3], 1, "val_loss", [0, 1], CPU)


class DigitsWithFloatMetrics(DigitsMLPTask):
    """A task written the older way: ``metrics`` of Python floats (float() fails under vmap)."""

    def metrics(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        return {"val_loss": float(self.loss(output, target)), "val_max": float(output.max())}


@pytest.mark.parametrize("task", [get_task("linreg"), get_task("digits-mlp"),
                                  get_task("charlm"), DigitsWithFloatMetrics()],
                         ids=["linreg", "digits-mlp", "charlm", "float-metrics"])
def test_stacked_metrics_are_each_trials_own(task: Task) -> None:
    """A fused pack reads every trial's validation metrics of a chunk back at once."""
    data = task.data()
    outputs = []
    for seed in range(3):
        torch.manual_seed(seed)
        with torch.no_grad():
            outputs.append(task.model()(data.x_val))
    stacked = task.stacked_metrics(torch.stack(outputs), data.y_val)
    one_by_one = [task.metrics(output, data.y_val) for output in outputs]
    assert [sorted(m) for m in stacked] == [sorted(m) for m in one_by_one]
    for got, want in zip(stacked, one_by_one, strict=True):
        assert got == pytest.approx(want, rel=1e-6)
    assert len({m["val_loss"] for m in stacked}) == 3


def test_a_task_with_float_metrics_trains_fused_with_each_trials_own() -> None:
    task = DigitsWithFloatMetrics()
    cfgs = [TrialConfig(Schedule.build("cosine"), OptimizerChoice.build("sgd", lr))
            for lr in (0.01, 0.1)]
    results = train_pack(task, cfgs, 1, "val_loss", [1, 2], CPU, compile_after=0)
    alone = [train_trial(task, c, 1, "val_loss", seed, CPU) for c, seed in zip(cfgs, [1, 2],
                                                                                strict=True)]
    for got, want in zip(results, alone, strict=True):
        assert sorted(got.metrics) == ["train_loss", "val_loss", "val_max"]
        assert got.metrics == pytest.approx(want.metrics, rel=1e-4)
