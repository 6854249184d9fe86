"""Which ``torch.optim.lr_scheduler`` classes reproduce a schedule, as data (no torch import).

The worker instantiates a plan; the exporter prints it. An empty plan means ``LambdaLR`` over
the pure formula (families with no built-in class, and clip, which torch lacks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lrtune.schedules import FAMILIES, Schedule, formulas

Step = tuple[str, dict[str, Any]]


def _polynomial(p: dict[str, Any], T: int, spe: int, lr0: float) -> Step | None:
    if p["end_factor"] == 0.0:
        return "PolynomialLR", {"total_iters": T, "power": p["power"]}
    if p["power"] == 1.0:
        return "LinearLR", {"start_factor": 1.0, "end_factor": p["end_factor"], "total_iters": T}
    return None


BUILTIN: dict[str, Callable[[dict[str, Any], int, int, float], Step | None]] = {
    "step": lambda p, T, spe, lr0: (
        "StepLR", {"step_size": formulas.fraction_steps(p["step_size"], T), "gamma": p["gamma"]}),
    "multistep": lambda p, T, spe, lr0: (
        "MultiStepLR", {"milestones": formulas.multistep_milestones(T, p["first"], p["interval"]),
                        "gamma": p["gamma"]}),
    "exponential": lambda p, T, spe, lr0: ("ExponentialLR", {"gamma": p["gamma"] ** (1.0 / spe)}),
    "polynomial": _polynomial,
    "cosine": lambda p, T, spe, lr0: (
        "CosineAnnealingLR", {"T_max": T, "eta_min": p["eta_min_ratio"] * lr0}),
    "cosine_restarts": lambda p, T, spe, lr0: (
        "CosineAnnealingWarmRestarts", {"T_0": formulas.fraction_steps(p["T_0"], T),
                                        "T_mult": p["T_mult"],
                                        "eta_min": p["eta_min_ratio"] * lr0}),
    "cyclic": lambda p, T, spe, lr0: (
        "CyclicLR", {"base_lr": lr0 * p["base_ratio"], "max_lr": lr0,
                     "step_size_up": formulas.fraction_steps(p["step_size"], T),
                     "mode": p["mode"], "cycle_momentum": False}),
    "onecycle": lambda p, T, spe, lr0: (
        "OneCycleLR", {"max_lr": lr0, "total_steps": T, "pct_start": p["pct_start"],
                       "anneal_strategy": p["anneal"], "div_factor": p["div_factor"],
                       "final_div_factor": p["final_div_factor"], "cycle_momentum": False}),
    "plateau": lambda p, T, spe, lr0: (
        "ReduceLROnPlateau", {"mode": p["mode"], "factor": p["factor"],
                              "patience": p["patience"], "threshold": p["threshold"],
                              "cooldown": p["cooldown"]}),
}

# These overwrite the optimizer's initial LR when built, which SequentialLR cannot undo.
NOT_SEQUENTIAL = {"cyclic", "onecycle"}


@dataclass(frozen=True)
class TorchPlan:
    """Schedulers to build in order; two of them run in sequence, split at ``milestone``."""

    steps: tuple[Step, ...] = ()
    milestone: int | None = None

    @property
    def on_metric(self) -> bool:
        return len(self.steps) == 1 and self.steps[0][0] == "ReduceLROnPlateau"


def torch_plan(schedule: Schedule, total_steps: int, steps_per_epoch: int,
               base_lr: float) -> TorchPlan:
    T, spe, lr0 = total_steps, steps_per_epoch, base_lr
    builder = BUILTIN.get(schedule.family)
    if schedule.clip is not None or builder is None:
        return TorchPlan()
    if schedule.warmup is None:
        step = builder(schedule.params, T, spe, lr0)
        return TorchPlan((step,)) if step else TorchPlan()
    if FAMILIES[schedule.family].metric_driven or schedule.family in NOT_SEQUENTIAL:
        return TorchPlan()
    w = formulas.fraction_steps(schedule.warmup["fraction"], T)
    rest = builder(schedule.params, T - w, spe, lr0)
    if rest is None:
        return TorchPlan()
    warm = ("LinearLR", {"start_factor": schedule.warmup["start_factor"], "end_factor": 1.0,
                         "total_iters": w})
    return TorchPlan((warm, rest), milestone=w)
