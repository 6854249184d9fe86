"""Pydantic models of what users submit: the search space and the study spec."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from lrtune.errors import SpecError
from lrtune.optimizers import MAX_LR, MIN_LR, OPTIMIZERS
from lrtune.schedules import CLIP, FAMILIES


def _one_of(names: Iterable[str], what: str) -> Callable[[str], str]:
    known = tuple(names)

    def check(value: str) -> str:
        if value not in known:
            raise ValueError(f"unknown {what} {value!r}; known: {', '.join(known)}")
        return value

    return check


# A name from a registry, with the registry's names as the schema's enum.
FamilyName = Annotated[str, AfterValidator(_one_of(FAMILIES, "family")),
                       WithJsonSchema({"type": "string", "enum": list(FAMILIES)})]
OptimizerName = Annotated[str, AfterValidator(_one_of(OPTIMIZERS, "optimizer")),
                          WithJsonSchema({"type": "string", "enum": list(OPTIMIZERS)})]


def _task_enum(schema: dict[str, Any]) -> None:
    from lrtune.tasks import task_names

    schema["enum"] = task_names()


def explain(error: Mapping[str, Any]) -> tuple[str, str]:
    """The field (dotted, e.g. ``space.lr.low``) a pydantic validation error names, and a
    message a person can act on, without pydantic's internals (union members, regexes,
    character offsets)."""
    kind = str(error.get("type", ""))
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, SpecError):  # a model validator naming its own field
        return cause.field, cause.message
    parts = [str(p) for p in error.get("loc", ())]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    if kind == "json_invalid":
        reason = (error.get("ctx") or {}).get("error", "")
        where = f", at character {parts[-1]}" if parts else ""
        return "body", f"the body is not valid JSON ({reason}{where})".replace("(, ", "(")
    field = ".".join(p for p in parts if "[" not in p and not p.startswith("constrained-")
                     and p not in ("int", "float", "str", "bool")) or "body"
    message = str(error.get("msg", "invalid"))
    if field == "body" and kind in ("model_attributes_type", "dict_type", "missing"):
        message = "send the study spec as a JSON object (Content-Type: application/json)"
    elif kind == "string_pattern_mismatch":
        message = "use letters, digits, '_', '.' and '-' only"
    return field, message


SEED_MAX = 2**32 - 1  # numpy's and Optuna's samplers take seeds below 2**32
BOUND = 1e12  # no parameter of the catalogue needs a bound beyond it
Bounded = Annotated[float, Field(ge=-BOUND, le=BOUND)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Range(Strict):
    """A search range; ``log`` defaults to the parameter's own scale."""

    low: Bounded
    high: Bounded
    log: bool | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


class LrRange(Range):
    low: float = Field(1e-4, ge=MIN_LR, le=MAX_LR)
    high: float = Field(1.0, ge=MIN_LR, le=MAX_LR)
    log: bool | None = True


class SpaceSpec(Strict):
    """What to search: families, optimizers, base LR, modifiers, overrides and fixed values."""

    families: list[FamilyName] = Field(default_factory=lambda: list(FAMILIES), min_length=1,
                                       max_length=len(FAMILIES))
    optimizers: list[OptimizerName] = Field(
        default_factory=lambda: ["sgd", "momentum", "adam", "adamw", "rmsprop"], min_length=1,
        max_length=len(OPTIMIZERS))
    lr: LrRange | Literal["auto"] = Field(
        default_factory=LrRange,
        description='base LR range, or "auto" to take it from an LR range test before the study')
    weight_decay: Annotated[float, Field(ge=0, le=10)] | Range = 0.0
    warmup: bool | Literal["search"] = False
    clip: dict[str, Bounded] | None = Field(None, max_length=2)
    batch_size: list[Annotated[int, Field(ge=1, le=65536)]] | None = Field(
        None, min_length=1, max_length=16)
    ranges: dict[str, Range] = Field(default_factory=dict, max_length=64)
    fixed: dict[str, Any] = Field(default_factory=dict, max_length=64)

    @field_validator("families", "optimizers")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("names repeat")
        return v

    @field_validator("weight_decay")
    @classmethod
    def _decay(cls, v: Range | float) -> Range | float:
        if isinstance(v, float) and not (math.isfinite(v) and v >= 0):
            raise ValueError("must be >= 0")
        if isinstance(v, Range) and v.low < 0:
            raise ValueError("low must be >= 0")
        return v

    @field_validator("clip")
    @classmethod
    def _clip(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is not None:
            try:
                bounds = CLIP.resolve(v, "clip")
            except SpecError as e:
                raise ValueError(e.message) from None
            if bounds["min_lr"] > bounds["max_lr"]:
                raise ValueError("min_lr must not exceed max_lr")
        return v


class SamplerSpec(Strict):
    name: Literal["tpe", "random", "cmaes", "qmc"] = "tpe"
    seed: int | None = Field(None, ge=0, le=SEED_MAX)


class PrunerSpec(Strict):
    name: Literal["none", "percentile", "median", "hyperband", "successive_halving",
                  "schedule", "horizon"] = "percentile"
    rungs: int | None = Field(None, ge=2, le=6, description='"horizon": rungs of the '
                              "ladder, the top one the full horizon (default 3)")
    eta: int | None = Field(None, ge=2, le=10, description='"horizon": runs of a rung per '
                            "promotion, and the ratio of neighbouring horizons (default 3)")

    @model_validator(mode="after")
    def _ladder_only(self) -> PrunerSpec:
        for key in ("rungs", "eta"):
            if getattr(self, key) is not None and self.name != "horizon":
                raise SpecError(f"pruner.{key}", f'{key} shapes the "horizon" ladder, not '
                                f"the {self.name!r} pruner")
        return self


class WarmStartSpec(Strict):
    """Start from earlier studies: their best ``top`` configurations become this study's first
    trials (of its budget)."""

    studies: list[Annotated[int, Field(ge=1, le=2**31 - 1)]] = Field(
        ..., min_length=1, max_length=20, description="ids of earlier studies")
    top: int | None = Field(None, ge=1, le=1000, description="configurations taken, best "
                            "first (default: 5, at most n_trials)")

    @field_validator("studies")
    @classmethod
    def _distinct(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError("a study is listed twice")
        return v


class StudySpec(Strict):
    """The body of ``POST /studies``."""

    name: str = Field(..., min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.\-]+$")
    task: str = Field(..., min_length=1, max_length=100, json_schema_extra=_task_enum)
    epochs: int = Field(10, ge=1, le=1_000_000)
    n_trials: int = Field(20, ge=1, le=10_000_000)
    objective: str = Field("val_loss", min_length=1, max_length=100)
    space: SpaceSpec = Field(default_factory=SpaceSpec)
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    pruner: PrunerSpec = Field(default_factory=PrunerSpec)
    pack: Annotated[int, Field(ge=1, le=1_000_000)] | Literal["auto"] = 1
    seed: int = Field(0, ge=0, le=SEED_MAX)
    direction: Literal["minimize", "maximize"] | None = Field(
        None, description="the objective's direction: an external study's own (default "
                          "minimize); a built-in task's is known and may only be repeated")
    steps_per_epoch: int | None = Field(
        None, ge=1, le=10_000_000, description='external studies: optimizer steps per epoch '
        "of the user's loop, if fixed (else each trial's client says it)")
    warm_start: WarmStartSpec | None = None

    @model_validator(mode="after")
    def _consistent(self) -> StudySpec:
        from lrtune.tasks import EXTERNAL

        if self.task == EXTERNAL:
            if self.space.lr == "auto":
                raise SpecError("space.lr", 'an external study cannot take "auto": lrtune '
                                "runs no LR range test on your code; give low and high")
            if self.pruner.name == "horizon":
                raise SpecError("pruner.name", 'the "horizon" ladder runs lrtune\'s '
                                "trainer on shortened horizons; an external study's code "
                                "trains its own: choose another pruner")
            if self.pack != 1:
                raise SpecError("pack", "an external study is trained by your own code, one "
                                "trial per client at a time: leave pack at 1")
        warm = self.warm_start
        if warm is not None and warm.top is not None and warm.top > self.n_trials:
            raise SpecError("warm_start.top", f"{warm.top} configurations would "
                            f"pass the budget of {self.n_trials} trials")
        if self.task != EXTERNAL and self.steps_per_epoch is not None:
            raise SpecError("steps_per_epoch", f"task {self.task!r} knows its own steps per "
                            'epoch; steps_per_epoch is for task "external"')
        return self
