"""LR range test analysis: from a loss-vs-LR sweep to base-LR search bounds (no torch).

The test (Leslie Smith, "Cyclical Learning Rates", 2017) trains for a few hundred steps while
the LR grows exponentially, ``lr_i = min_lr * (max_lr / min_lr) ** (i / (steps - 1))``, and
records the loss. The loss falls while the LR is useful and blows up past the largest stable
LR. Bounds chosen here:

- ``high``: the LR at the smoothed loss's minimum (beyond it training degrades);
- ``low``: ten times below the steepest descent (or 100× below ``high``, whichever is lower),
  so the search always spans at least two decades.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from lrtune.errors import SpecError
from lrtune.spec import LrRange, StudySpec

SMOOTHING = 0.9  # exponential moving average of the loss (bias-corrected)
DIVERGED = 4.0  # stop once the smoothed loss exceeds this many times its minimum
SPAN = 100.0  # the suggested range spans at least this factor
MIN_LR, MAX_LR, STEPS = 1e-6, 10.0, 120  # the default sweep (worker and `lrtune lr-find`)


@dataclass(frozen=True)
class RangeTest:
    """One sweep and the bounds read off it."""

    optimizer: str
    lrs: list[float]
    losses: list[float]  # raw per-step training loss
    smoothed: list[float]
    low: float
    high: float
    steepest: float  # LR where the smoothed loss falls fastest against log LR
    reason: str | None = None  # set when the curve gave no usable minimum

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: a non-finite loss (past divergence) is ``None``."""
        data = asdict(self)
        for key in ("losses", "smoothed"):
            data[key] = [v if math.isfinite(v) else None for v in data[key]]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RangeTest:
        curves = {key: [math.inf if v is None else v for v in data[key]]
                  for key in ("losses", "smoothed")}
        return cls(**(data | curves))


@dataclass(frozen=True)
class LrBounds:
    """The base-LR range a study searches, with the sweeps it came from."""

    low: float
    high: float
    tests: list[RangeTest] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high,
                "tests": [t.to_dict() for t in self.tests]}

    def summary(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high,
                "by_optimizer": {t.optimizer: [t.low, t.high] for t in self.tests}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LrBounds:
        return cls(float(data["low"]), float(data["high"]),
                   [RangeTest.from_dict(t) for t in data.get("tests", [])])


def exponential_lrs(min_lr: float, max_lr: float, steps: int) -> list[float]:
    if not 0 < min_lr < max_lr or steps < 2:
        raise ValueError("need 0 < min_lr < max_lr and at least 2 steps")
    return [min_lr * (max_lr / min_lr) ** (i / (steps - 1)) for i in range(steps)]


def smooth(losses: list[float], beta: float = SMOOTHING) -> list[float]:
    """Bias-corrected EMA; NaN/inf from the first non-finite loss on."""
    out, avg = [], 0.0
    for i, loss in enumerate(losses):
        if not math.isfinite(loss):
            out.extend([math.inf] * (len(losses) - i))
            break
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta ** (i + 1)))
    return out


def diverged_at(smoothed: list[float]) -> int:
    """Index of the first step past divergence (``len`` when the sweep never diverged)."""
    best = math.inf
    for i, value in enumerate(smoothed):
        if not math.isfinite(value) or (i > 0 and value > DIVERGED * best):
            return i
        best = min(best, value)
    return len(smoothed)


def analyse(optimizer: str, lrs: list[float], losses: list[float]) -> RangeTest:
    """Read search bounds off a sweep (``lrs`` increasing, one loss per step)."""
    smoothed = smooth(losses)
    end = diverged_at(smoothed)
    usable = smoothed[:end]
    if len(usable) < 3:
        return RangeTest(optimizer, lrs, losses, smoothed, lrs[0], lrs[-1], lrs[0],
                         "the loss diverged at once: the sweep's lowest LR is already too high")
    i_min = min(range(len(usable)), key=usable.__getitem__)
    if i_min == 0:
        return RangeTest(optimizer, lrs, losses, smoothed, lrs[0], lrs[min(end, len(lrs)) - 1],
                         lrs[0], "the loss never decreased: range left as swept")
    start = min(i_min - 1, max(2, len(lrs) // 10))  # the average's first steps are noise
    slopes = {i: (usable[i + 1] - usable[i]) / math.log(lrs[i + 1] / lrs[i])
              for i in range(start, i_min)}
    steepest = lrs[min(slopes, key=slopes.__getitem__)]
    high = lrs[i_min]
    low = max(lrs[0], min(steepest / 10, high / SPAN))
    return RangeTest(optimizer, lrs, losses, smoothed, low, high, steepest)


def combine(tests: list[RangeTest]) -> LrBounds:
    """One base-LR range covering every optimizer's suggestion (``lr`` is shared)."""
    if not tests:
        raise ValueError("no range tests")
    return LrBounds(min(t.low for t in tests), max(t.high for t in tests), list(tests))


def resolved(spec: StudySpec, bounds: LrBounds | None) -> StudySpec:
    """``spec`` with ``space.lr: "auto"`` replaced by the range test's bounds."""
    if spec.space.lr != "auto":
        return spec
    if bounds is None:
        raise SpecError("space.lr", "'auto' has no range test result yet")
    space = spec.space.model_copy(update={"lr": LrRange(low=bounds.low, high=bounds.high)})
    return spec.model_copy(update={"space": space})
