"""The registry of schedule families and modifiers: one declarative entry each."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lrtune.schedules import formulas
from lrtune.schedules.params import Param, ParamSet

FRACTION = "fraction of training"


@dataclass(frozen=True)
class Family:
    """A schedule family: parameters, a one-line formula and the pure reference function."""

    name: str
    formula: str
    summary: str
    params: ParamSet
    fn: Callable[..., float]
    metric_driven: bool = False

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "formula": self.formula, "summary": self.summary,
                "metric_driven": self.metric_driven,
                "params": [p.describe() for p in self.params.params]}


def _family(name: str, formula: str, summary: str, fn: Callable[..., float], *params: Param,
            metric_driven: bool = False) -> Family:
    return Family(name, formula, summary, ParamSet(params), fn, metric_driven)


def _gamma(default: float, low: float, high: float, help: str) -> Param:
    return Param("gamma", "float", default, "factor", help, low=low, high=high,
                 min=0.0, max=1.0, open_min=True)


FAMILIES: dict[str, Family] = {f.name: f for f in [
    _family("constant", "lr = lr0", "Fixed learning rate.", formulas.constant),
    _family("step", "lr = lr0 * gamma ** floor(t / step_size)",
            "Step decay (StepLR): multiply by gamma every step_size of training.", formulas.step,
            Param("step_size", "float", 0.3, FRACTION, "interval between decays",
                  low=0.05, high=0.5, min=0.0, max=1.0, open_min=True),
            _gamma(0.1, 0.05, 0.9, "decay factor at each step")),
    _family("multistep", "lr = lr0 * gamma ** (milestones passed)",
            "MultiStepLR with milestones at first, first+interval, ... of training.",
            formulas.multistep,
            Param("first", "float", 0.3, FRACTION, "first milestone",
                  low=0.1, high=0.8, min=0.0, max=1.0, open_min=True, open_max=True),
            Param("interval", "float", 0.3, FRACTION, "spacing of later milestones",
                  low=0.05, high=0.5, min=0.01, max=1.0),
            _gamma(0.1, 0.05, 0.9, "decay factor at each milestone")),
    _family("exponential", "lr = lr0 * gamma ** (t / steps_per_epoch)",
            "Exponential decay (ExponentialLR), continuous per step.", formulas.exponential,
            _gamma(0.9, 0.5, 0.999, "decay factor per epoch")),
    _family("inverse_time", "lr = lr0 / (1 + decay_rate * t / steps_per_epoch)",
            "Inverse-time decay.", formulas.inverse_time,
            Param("decay_rate", "float", 0.5, "per epoch", "decay rate k",
                  low=0.01, high=10.0, log=True, min=0.0, max=1e6)),
    _family("polynomial", "lr = end + (lr0 - end) * (1 - t/T) ** power, end = end_factor*lr0",
            "Polynomial decay (PolynomialLR; power 1 is LinearLR).", formulas.polynomial,
            Param("power", "float", 1.0, "exponent", "shape of the decay",
                  low=0.5, high=3.0, min=0.0, max=100.0, open_min=True),
            Param("end_factor", "float", 0.0, "factor of lr0", "final LR over lr0",
                  low=0.0, high=0.1, min=0.0, max=1.0)),
    _family("cosine", "lr = eta_min + (lr0 - eta_min) * (1 + cos(pi*t/T)) / 2",
            "Cosine annealing (CosineAnnealingLR), eta_min = eta_min_ratio * lr0.",
            formulas.cosine,
            Param("eta_min_ratio", "float", 0.0, "factor of lr0", "floor of the anneal",
                  low=1e-4, high=0.1, log=True, min=0.0, max=1.0, open_max=True)),
    _family("cosine_restarts", "lr = eta_min + (lr0 - eta_min) * (1 + cos(pi*T_cur/T_i)) / 2",
            "SGDR (CosineAnnealingWarmRestarts), first period T_0, growing by T_mult.",
            formulas.cosine_restarts,
            Param("T_0", "float", 0.25, FRACTION, "length of the first cycle",
                  low=0.05, high=0.5, min=0.0, max=1.0, open_min=True),
            Param("T_mult", "int", 1, "factor", "cycle length multiplier", low=1, high=3,
                  min=1, max=10),
            Param("eta_min_ratio", "float", 0.0, "factor of lr0", "floor of each anneal",
                  low=1e-4, high=0.1, log=True, min=0.0, max=1.0, open_max=True)),
    _family("cyclic", "lr = base + (lr0 - base) * triangle(t / (2*step_size)) * scale(cycle)",
            "CyclicLR between base_ratio*lr0 and lr0, half cycle step_size of training.",
            formulas.cyclic,
            Param("base_ratio", "float", 0.1, "factor of lr0", "lower bound over lr0",
                  low=0.01, high=0.5, log=True, min=0.0, max=1.0, open_min=True),
            Param("step_size", "float", 0.1, FRACTION, "half-cycle length",
                  low=0.02, high=0.25, min=0.0, max=0.5, open_min=True),
            Param("mode", "categorical", "triangular", "", "amplitude policy",
                  choices=("triangular", "triangular2"))),
    _family("onecycle", "warm from lr0/div_factor to lr0 over pct_start, then anneal to "
            "lr0/(div_factor*final_div_factor)", "OneCycleLR with max_lr = lr0.",
            formulas.onecycle,
            Param("pct_start", "float", 0.3, FRACTION, "rising phase",
                  low=0.05, high=0.5, min=0.0, max=1.0, open_min=True, open_max=True),
            Param("div_factor", "float", 25.0, "factor", "lr0 over the initial LR",
                  low=2.0, high=100.0, log=True, min=1.0, max=1e9),
            Param("final_div_factor", "float", 1e4, "factor", "initial LR over the final LR",
                  low=10.0, high=1e5, log=True, min=1.0, max=1e12),
            Param("anneal", "categorical", "cos", "", "annealing strategy",
                  choices=("cos", "linear"))),
    _family("wsd", "linear warmup, then lr0, then decay to 0 over the last decay of training",
            "Warmup-stable-decay.", formulas.wsd,
            Param("warmup", "float", 0.05, FRACTION, "warmup phase",
                  low=0.0, high=0.2, min=0.0, max=0.5),
            Param("decay", "float", 0.2, FRACTION, "decay phase",
                  low=0.05, high=0.5, min=0.0, max=0.5, open_min=True),
            Param("shape", "categorical", "linear", "", "decay shape",
                  choices=("linear", "cosine", "sqrt"))),
    _family("plateau", "lr *= factor after patience epochs without a threshold improvement",
            "ReduceLROnPlateau on the validation metric.", formulas.plateau,
            Param("factor", "float", 0.1, "factor", "multiplier at each reduction",
                  low=0.1, high=0.7, min=0.0, max=1.0, open_min=True, open_max=True),
            Param("patience", "int", 2, "epochs", "bad epochs tolerated", low=0, high=5,
                  min=0, max=10_000),
            Param("threshold", "float", 1e-4, "relative", "improvement that counts",
                  low=1e-4, high=0.1, log=True, min=0.0, max=1.0, open_max=True),
            Param("cooldown", "int", 0, "epochs", "epochs ignored after a reduction",
                  low=0, high=3, min=0, max=10_000),
            Param("mode", "categorical", "min", "", "set from the objective's direction",
                  choices=("min", "max"), searched=False),
            metric_driven=True),
    _family("random", "lr = lr0 * U(low, high), drawn per step from seed",
            "Random LR, seeded.", formulas.random_lr,
            Param("low", "float", 0.5, "factor of lr0", "lower multiplier",
                  low=0.1, high=1.0, min=0.0, max=1e3, open_min=True),
            Param("high", "float", 1.5, "factor of lr0", "upper multiplier",
                  low=1.0, high=3.0, min=0.0, max=1e3, open_min=True),
            Param("seed", "int", 0, "", "random seed", low=0, high=10_000, min=0,
                  max=2**32 - 1)),
]}

WARMUP = ParamSet((
    Param("fraction", "float", 0.05, FRACTION, "warmup length",
          low=0.01, high=0.2, min=0.0, max=0.9, open_min=True),
    Param("start_factor", "float", 0.1, "factor of lr0", "LR at step 0 over lr0",
          low=0.01, high=0.5, log=True, min=0.0, max=1.0, open_min=True),
))

CLIP = ParamSet((
    Param("min_lr", "float", 0.0, "LR", "lower bound", min=0.0, max=1e9, searched=False),
    Param("max_lr", "float", 1e9, "LR", "upper bound", min=0.0, max=1e9, open_min=True,
          searched=False),
))

MODIFIERS: dict[str, tuple[str, ParamSet]] = {
    "warmup": ("linear warmup from start_factor*lr0 over fraction of training", WARMUP),
    "clip": ("lr = min(max(lr, min_lr), max_lr)", CLIP),
}
