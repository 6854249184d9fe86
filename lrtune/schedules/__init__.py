"""Schedule catalogue: families, modifiers and a validated, evaluable ``Schedule``."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from lrtune.errors import SpecError
from lrtune.schedules import formulas
from lrtune.schedules.catalogue import CLIP, FAMILIES, MODIFIERS, WARMUP, Family
from lrtune.schedules.params import Param, ParamSet

__all__ = ["CLIP", "FAMILIES", "MODIFIERS", "WARMUP", "Family", "Param", "ParamSet",
           "Schedule", "family", "from_settings"]


def family(name: str, field_name: str = "family") -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise SpecError(field_name, f"unknown schedule family {name!r}; known: "
                        f"{sorted(FAMILIES)}") from None


@dataclass(frozen=True)
class Schedule:
    """A concrete schedule: a family with all parameters set, plus optional modifiers."""

    family: str
    params: dict[str, Any] = field(default_factory=dict)
    warmup: dict[str, Any] | None = None
    clip: dict[str, Any] | None = None

    @classmethod
    def build(cls, family_name: str, params: dict[str, Any] | None = None,
              warmup: dict[str, Any] | None = None,
              clip: dict[str, Any] | None = None) -> Schedule:
        """Validate and fill defaults; raises SpecError naming the offending parameter."""
        fam = family(family_name)
        resolved = fam.params.resolve(params or {}, family_name)
        if family_name == "wsd" and resolved["warmup"] + resolved["decay"] > 1.0:
            raise SpecError("wsd.decay", "warmup + decay must not exceed 1")
        if family_name == "random" and resolved["low"] > resolved["high"]:
            raise SpecError("random.low", "must not exceed random.high")
        warm = WARMUP.resolve(warmup, "warmup") if warmup is not None else None
        bounds = CLIP.resolve(clip, "clip") if clip is not None else None
        if bounds is not None and bounds["min_lr"] > bounds["max_lr"]:
            raise SpecError("clip.min_lr", "must not exceed clip.max_lr")
        return cls(family_name, resolved, warm, bounds)

    def check_horizon(self, total_steps: int, steps_per_epoch: int) -> None:
        """Raise SpecError when the run is too short for this schedule's phases."""
        if total_steps < 1 or steps_per_epoch < 1:
            raise SpecError("epochs", "training must have at least one step")
        rest = total_steps
        if self.warmup is not None:
            w = formulas.fraction_steps(self.warmup["fraction"], total_steps)
            if w >= total_steps:
                raise SpecError("warmup.fraction", f"warmup of {w} steps leaves no training")
            if not FAMILIES[self.family].metric_driven:
                rest = total_steps - w
        if self.family == "onecycle" and float(self.params["pct_start"] * rest) - 1 == 0:
            # OneCycleLR divides by the rising phase's length, pct_start*T - 1 steps
            raise SpecError("onecycle.pct_start", f"rising phase of exactly 1 step of {rest}")

    def lr(self, step: int, total_steps: int, steps_per_epoch: int, base_lr: float,
           metrics: Sequence[float] = ()) -> float:
        """LR for 0-based optimizer ``step`` of a ``total_steps`` run."""
        return self.function()(step, total_steps, steps_per_epoch, base_lr, metrics)

    def function(self) -> formulas.Formula:
        """The composed pure function ``f(t, T, spe, lr0, metrics)``."""
        fam = FAMILIES[self.family]
        fn: formulas.Formula = partial(fam.fn, **self.params)
        if self.warmup is not None:
            wrap = formulas.warmup_scaled if fam.metric_driven else formulas.warmup_sequential
            fn = partial(wrap, fn, **self.warmup)
        if self.clip is not None:
            fn = partial(formulas.clip, fn, **self.clip)
        return fn

    def curve(self, total_steps: int, steps_per_epoch: int, base_lr: float,
              metrics: Sequence[float] = ()) -> list[float]:
        self.check_horizon(total_steps, steps_per_epoch)
        fn = self.function()
        return [fn(t, total_steps, steps_per_epoch, base_lr, metrics) for t in range(total_steps)]

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "params": dict(self.params), "warmup": self.warmup,
                "clip": self.clip}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Schedule:
        return cls.build(data["family"], data.get("params"), data.get("warmup"),
                         data.get("clip"))


def from_settings(family_name: str, settings: Iterable[tuple[str, str]],
                  warmup: bool = False) -> Schedule:
    """A schedule from textual ``NAME=VALUE`` settings (CLI ``--set``, query parameters):
    ``warmup.NAME`` / ``clip.NAME`` set a modifier, ``NAME`` or ``FAMILY.NAME`` the family.
    Values are read as JSON where they parse (numbers, booleans), else kept as text."""
    groups: dict[str, dict[str, Any]] = {"params": {}, "warmup": {}, "clip": {}}
    for name, raw in settings:
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        prefix, dot, rest = name.partition(".")
        if dot and prefix in ("warmup", "clip"):
            groups[prefix][rest] = value
        else:
            groups["params"][rest if dot and prefix == family_name else name] = value
    return Schedule.build(family_name, groups["params"],
                          groups["warmup"] or ({} if warmup else None), groups["clip"] or None)


def describe_catalogue() -> dict[str, Any]:
    return {
        "families": [f.describe() for f in FAMILIES.values()],
        "modifiers": [{"name": name, "formula": formula,
                       "params": [p.describe() for p in params.params]}
                      for name, (formula, params) in MODIFIERS.items()],
    }
