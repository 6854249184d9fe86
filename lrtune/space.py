"""Search space: a ``SpaceSpec`` as Optuna define-by-run suggestions, conditional on family.

Sampled names are stable: ``schedule``, ``lr``, ``optimizer``, ``weight_decay``,
``batch_size``, ``warmup``, ``<family>.<param>``, ``<optimizer>.<param>``, ``warmup.<param>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from lrtune.errors import SpecError
from lrtune.optimizers import OPTIMIZERS, OptimizerChoice
from lrtune.schedules import FAMILIES, WARMUP, Param, Schedule
from lrtune.spec import Range, SpaceSpec
from lrtune.tasks import Direction


@dataclass(frozen=True)
class TrialConfig:
    """Everything one trial trains with."""

    schedule: Schedule
    optimizer: OptimizerChoice
    batch_size: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"schedule": self.schedule.to_dict(), "optimizer": self.optimizer.to_dict(),
                "batch_size": self.batch_size}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialConfig:
        opt = data["optimizer"]
        return cls(Schedule.from_dict(data["schedule"]),
                   OptimizerChoice.build(opt["name"], opt["lr"], opt.get("weight_decay", 0.0),
                                         opt.get("params")),
                   data.get("batch_size"))


class Source(Protocol):
    """Where values come from: an Optuna trial (sampling) or stored params (decoding)."""

    def categorical(self, name: str, choices: list[Any]) -> Any: ...
    def float(self, name: str, low: float, high: float, log: bool) -> float: ...
    def int(self, name: str, low: int, high: int, log: bool) -> int: ...


class TrialSource:
    def __init__(self, trial: Any) -> None:
        self.trial = trial

    def categorical(self, name: str, choices: list[Any]) -> Any:
        return self.trial.suggest_categorical(name, choices)

    def float(self, name: str, low: float, high: float, log: bool) -> float:
        return float(self.trial.suggest_float(name, low, high, log=log))

    def int(self, name: str, low: int, high: int, log: bool) -> int:
        return int(self.trial.suggest_int(name, low, high, log=log))


class ParamsSource:
    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params

    def _get(self, name: str) -> Any:
        try:
            return self.params[name]
        except KeyError:
            raise SpecError(name, "missing from the trial's parameters") from None

    def categorical(self, name: str, choices: list[Any]) -> Any:
        return self._get(name)

    def float(self, name: str, low: float, high: float, log: bool) -> float:
        return float(self._get(name))

    def int(self, name: str, low: int, high: int, log: bool) -> int:
        return int(self._get(name))


class FittingSource(ParamsSource):
    """Stored params read as this space would suggest them: ``used`` collects those asked
    for, ``distributions`` the distributions this space's trials would store them with; a
    value outside the space's choices or range raises ``OutOfSpace``."""

    def __init__(self, params: dict[str, Any]) -> None:
        super().__init__(params)
        self.used: dict[str, Any] = {}
        self.distributions: dict[str, BaseDistribution] = {}

    def _take(self, name: str, fits: bool, distribution: BaseDistribution) -> Any:
        if not fits:
            raise OutOfSpace(name)
        self.used[name] = self.params[name]
        self.distributions[name] = distribution
        return self.params[name]

    def categorical(self, name: str, choices: list[Any]) -> Any:
        return self._take(name, self._get(name) in choices, CategoricalDistribution(choices))

    def float(self, name: str, low: float, high: float, log: bool) -> float:
        value = self._get(name)
        fits = isinstance(value, int | float) and (low == high == 0.0 or low <= value <= high)
        return float(self._take(name, fits, FloatDistribution(low, high, log=log)))

    def int(self, name: str, low: int, high: int, log: bool) -> int:
        value = self._get(name)
        return int(self._take(name, isinstance(value, int) and low <= value <= high,
                              IntDistribution(low, high, log=log)))


class OutOfSpace(Exception):
    """A stored parameter this space does not hold."""


def _param_of(key: str) -> Param | None:
    prefix, _, name = key.partition(".")
    if prefix in FAMILIES:
        return FAMILIES[prefix].params.get(name)
    if prefix in OPTIMIZERS:
        return OPTIMIZERS[prefix].params.get(name)
    if prefix == "warmup":
        return WARMUP.get(name)
    return None


class SearchSpace:
    """A validated space for one task and objective direction."""

    def __init__(self, spec: SpaceSpec, direction: Direction = "minimize") -> None:
        self.spec = spec
        self.direction = direction
        for key, rng in spec.ranges.items():
            self._check_range(key, rng)
        self.fixed = {key: self._check_fixed(key, value) for key, value in spec.fixed.items()}

    def _check_range(self, key: str, rng: Range) -> None:
        field = f"space.ranges.{key}"
        if key == "lr":
            raise SpecError(field, "set the base LR range with space.lr")
        param = _param_of(key)
        if param is None:
            raise SpecError(field, "unknown parameter; use <family>.<param>, <optimizer>.<param>"
                            " or warmup.<param>")
        if param.kind == "categorical" or not param.searched:
            raise SpecError(field, "this parameter takes no range")
        for bound in (rng.low, rng.high):
            param.validate(bound, field)
        if (rng.log if rng.log is not None else param.log) and rng.low <= 0:
            raise SpecError(field, "a log range needs low > 0")

    def _check_fixed(self, key: str, value: Any) -> Any:
        field = f"space.fixed.{key}"
        if key == "schedule":
            if value not in FAMILIES:
                raise SpecError(field, f"unknown schedule family {value!r}")
            return value
        if key == "optimizer":
            if value not in OPTIMIZERS:
                raise SpecError(field, f"unknown optimizer {value!r}")
            return value
        if key == "lr":
            return Param("lr", "float", 0.01, "", "", min=0.0, open_min=True).validate(value, field)
        if key == "warmup":
            if not isinstance(value, bool):
                raise SpecError(field, "must be true or false")
            return value
        param = _param_of(key)
        if param is None:
            raise SpecError(field, "unknown parameter")
        return param.validate(value, field)

    def sample(self, trial: Any) -> TrialConfig:
        return self.choose(TrialSource(trial))

    def decode(self, params: dict[str, Any]) -> TrialConfig:
        return self.choose(ParamsSource(params))

    def fitting(self, params: dict[str, Any]) -> dict[str, Any] | None:
        """The parameters this space would ask for, taken from ``params`` (another study's
        trial), or None when one is missing or outside this space."""
        fitted = self.fitted(params)
        return fitted[0] if fitted is not None else None

    def fitted(self, params: dict[str, Any]
               ) -> tuple[dict[str, Any], dict[str, BaseDistribution]] | None:
        """``fitting``'s parameters and this space's distributions of them."""
        source = FittingSource(params)
        try:
            self.choose(source)
        except (OutOfSpace, SpecError):
            return None
        return source.used, source.distributions

    def choose(self, src: Source) -> TrialConfig:
        spec, fixed = self.spec, self.fixed
        family = fixed.get("schedule") or src.categorical("schedule", list(spec.families))
        lr = fixed.get("lr") or self._lr(src)
        opt_name = fixed.get("optimizer") or src.categorical("optimizer", list(spec.optimizers))
        if isinstance(spec.weight_decay, Range):
            wd_log = spec.weight_decay.log is not False and spec.weight_decay.low > 0
            wd = src.float("weight_decay", spec.weight_decay.low, spec.weight_decay.high, wd_log)
        else:
            wd = spec.weight_decay
        fam_params = {p.name: self._value(src, f"{family}.{p.name}", p)
                      for p in FAMILIES[family].params.params}
        if "mode" in fam_params and FAMILIES[family].metric_driven:
            fam_params["mode"] = "min" if self.direction == "minimize" else "max"
        opt_params = {p.name: self._value(src, f"{opt_name}.{p.name}", p)
                      for p in OPTIMIZERS[opt_name].params.params}
        use_warmup = fixed.get("warmup", spec.warmup)
        if use_warmup == "search":
            use_warmup = src.categorical("warmup", [False, True])
        warmup = ({p.name: self._value(src, f"warmup.{p.name}", p) for p in WARMUP.params}
                  if use_warmup else None)
        batch = src.categorical("batch_size", list(spec.batch_size)) if spec.batch_size else None
        if "batch_size" in fixed:
            batch = int(fixed["batch_size"])
        return TrialConfig(Schedule.build(family, fam_params, warmup, spec.clip),
                           OptimizerChoice.build(opt_name, lr, wd, opt_params), batch)

    def _lr(self, src: Source) -> float:
        rng = self.spec.lr
        if rng == "auto":
            if isinstance(src, ParamsSource):
                return src.float("lr", 0.0, 0.0, True)
            raise SpecError("space.lr", "'auto' must be resolved by an LR range test first")
        return src.float("lr", rng.low, rng.high, rng.log is not False)

    def _value(self, src: Source, key: str, param: Param) -> Any:
        if key in self.fixed:
            return self.fixed[key]
        if not param.searched:
            return param.default
        if param.kind == "categorical":
            return src.categorical(key, list(param.choices))
        rng = self.spec.ranges.get(key)
        low = rng.low if rng else param.low
        high = rng.high if rng else param.high
        log = rng.log if rng and rng.log is not None else param.log
        assert low is not None and high is not None
        if param.kind == "int":
            return src.int(key, int(low), int(high), log)
        return src.float(key, float(low), float(high), log)
