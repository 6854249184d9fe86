"""Parameter declarations shared by schedule families, modifiers and optimizers."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from lrtune.errors import SpecError

Kind = Literal["float", "int", "categorical"]


@dataclass(frozen=True)
class Param:
    """One tunable parameter: its default, its search range and its hard validity bounds.

    ``low``/``high`` is the default search range; ``min``/``max`` are the values the formula
    accepts at all (inclusive unless ``open_min``/``open_max``).
    """

    name: str
    kind: Kind
    default: Any
    unit: str
    help: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()
    min: float | None = None
    max: float | None = None
    open_min: bool = False
    open_max: bool = False
    searched: bool = True

    def validate(self, value: Any, field_name: str) -> Any:
        """Return ``value`` coerced to this parameter's type, or raise SpecError naming it."""
        if self.kind == "categorical":
            if value not in self.choices:
                raise SpecError(field_name, f"must be one of {list(self.choices)}, got {value!r}")
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SpecError(field_name, f"must be a number, got {value!r}")
        if self.kind == "int":
            if float(value) != int(value):
                raise SpecError(field_name, f"must be an integer, got {value!r}")
            value = int(value)
        else:
            value = float(value)
        if not math.isfinite(value):
            raise SpecError(field_name, f"must be finite, got {value!r}")
        if self.min is not None and (value < self.min or (self.open_min and value == self.min)):
            op = ">" if self.open_min else ">="
            raise SpecError(field_name, f"must be {op} {self.min}, got {value!r}")
        if self.max is not None and (value > self.max or (self.open_max and value == self.max)):
            op = "<" if self.open_max else "<="
            raise SpecError(field_name, f"must be {op} {self.max}, got {value!r}")
        return value

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.kind, "default": self.default,
                               "unit": self.unit, "help": self.help, "searched": self.searched}
        if self.kind == "categorical":
            out["choices"] = list(self.choices)
        else:
            out.update(low=self.low, high=self.high, log=self.log, min=self.min, max=self.max)
        return out


@dataclass(frozen=True)
class ParamSet:
    """An ordered set of parameters with validation of a whole assignment."""

    params: tuple[Param, ...] = field(default_factory=tuple)

    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def get(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def resolve(self, values: dict[str, Any], prefix: str) -> dict[str, Any]:
        """Defaults filled in, every value validated; unknown names raise SpecError."""
        for name in values:
            if self.get(name) is None:
                raise SpecError(f"{prefix}.{name}", f"unknown parameter; known: {self.names()}")
        return {
            p.name: p.validate(values.get(p.name, p.default), f"{prefix}.{p.name}")
            for p in self.params
        }
