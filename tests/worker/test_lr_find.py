"""The LR range test on real tasks: real training, bounds that make sense, the CLI and plot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from lrtune.results import parse_spec
from lrtune_worker.lr_find import find_bounds, sweep
from lrtune_worker.tasks import get_task

CPU = torch.device("cpu")


def test_adam_wants_a_smaller_lr_than_sgd_on_digits() -> None:
    task = get_task("digits-mlp")
    sgd, adam = sweep(task, "sgd", CPU), sweep(task, "adam", CPU)
    for test in (sgd, adam):
        assert test.reason is None
        assert test.high / test.low >= 100
        finite = [s for s in test.smoothed if s != float("inf")]
        assert min(finite) < finite[0]  # the loss did fall during the sweep
    assert adam.high < sgd.high / 3
    assert sweep(task, "adam", CPU) == adam  # seeded: every worker finds the same range


def test_study_bounds_cover_each_optimizer() -> None:
    spec = parse_spec({"name": "s", "task": "digits-mlp", "space": {
        "lr": "auto", "optimizers": ["momentum", "rmsprop"]}})
    seen = []
    bounds = find_bounds(spec, CPU, progress=seen.append)
    assert [t.optimizer for t in seen] == ["momentum", "rmsprop"]
    assert bounds.low == min(t.low for t in seen) and bounds.high == max(t.high for t in seen)


def test_lr_find_command(tmp_path: Path) -> None:
    plot = tmp_path / "curve.png"
    out = subprocess.run([sys.executable, "-m", "lrtune", "lr-find", "--task", "digits-mlp",
                          "--optimizers", "sgd,adam", "--steps", "60", "--plot", str(plot),
                          "--json"], capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(out.stdout)
    assert 0 < result["low"] < result["high"]
    assert [t["optimizer"] for t in result["tests"]] == ["sgd", "adam"]
    assert plot.read_bytes().startswith(b"\x89PNG")
    bad = subprocess.run([sys.executable, "-m", "lrtune", "lr-find", "--task", "digits-mlp",
                          "--min-lr", "1", "--max-lr", "0.1"], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "--min-lr" in bad.stderr
