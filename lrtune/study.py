"""Optuna pieces chosen by a study spec: sampler, pruner, direction; stored attribute names."""

from __future__ import annotations

import warnings

import optuna

from lrtune.attrs import ATTR_CONFIG as ATTR_CONFIG
from lrtune.attrs import ATTR_HORIZON as ATTR_HORIZON
from lrtune.attrs import ATTR_LR_CURVE as ATTR_LR_CURVE
from lrtune.attrs import ATTR_METRICS as ATTR_METRICS
from lrtune.attrs import ATTR_REASON as ATTR_REASON
from lrtune.attrs import ATTR_STEPS_PER_EPOCH as ATTR_STEPS_PER_EPOCH
from lrtune.attrs import STUDY_ATTR_LR_RANGE as STUDY_ATTR_LR_RANGE
from lrtune.attrs import STUDY_ATTR_SPEC as STUDY_ATTR_SPEC
from lrtune.errors import SpecError
from lrtune.schedule_pruning import SchedulePruner
from lrtune.spec import PrunerSpec, SamplerSpec, StudySpec
from lrtune.tasks import EXTERNAL, Direction, task_info
from lrtune.tpe import LazyGroupTPESampler


def derived_seed(seed: int, number: int) -> int:
    """The seed of trial ``number`` in a study seeded with ``seed``: distinct per trial, and
    below 2**32 as samplers and numpy need (unchanged from ``seed * 1_000_003 + number`` for
    seeds up to 4294)."""
    return (seed * 1_000_003 + number) % 2**32


def make_sampler(spec: SamplerSpec, previous: optuna.samplers.BaseSampler | None = None
                 ) -> optuna.samplers.BaseSampler:
    """The spec's sampler; ``previous``: the study's sampler it replaces (a reseed), whose
    kept state (lrtune's TPE's parameter groups) it starts from."""
    if spec.name == "random":
        return optuna.samplers.RandomSampler(seed=spec.seed)
    if spec.name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=spec.seed, warn_independent_sampling=False)
    if spec.name == "qmc":
        return optuna.samplers.QMCSampler(seed=spec.seed, warn_independent_sampling=False)
    with warnings.catch_warnings():  # multivariate/group/constant_liar are "experimental"
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = LazyGroupTPESampler(seed=spec.seed, constant_liar=True, n_startup_trials=10)
    sampler.keep_groups_of(previous)
    return sampler


def make_pruner(spec: PrunerSpec, epochs: int) -> optuna.pruners.BasePruner:
    if spec.name in ("none", "horizon"):  # the ladder prunes by claims (lrtune/horizon.py)
        return optuna.pruners.NopPruner()
    if spec.name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    if spec.name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1)
    warmup = max(1, epochs // 4)
    if spec.name == "percentile":
        # The default: the median rule prunes schedules that decay late far more often than
        # their final ranks warrant (docs/benchmarks.md, "Pruning"); the 75th percentile
        # saves nearly as much compute and almost never prunes an eventual winner.
        return optuna.pruners.PercentilePruner(75.0, n_startup_trials=5, n_warmup_steps=warmup)
    if spec.name == "schedule":
        # The percentile rule's quantile and warm-up, applied to each trial's final value as
        # its LR path forecasts it (lrtune/schedule_pruning.py).
        return SchedulePruner(epochs, 75.0, n_startup_trials=5, n_warmup_steps=warmup)
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=warmup)


def direction(spec: StudySpec) -> Direction:
    """The objective's direction: an external study's own, a task's from its metrics (a
    spec that contradicts it is refused, naming ``direction``)."""
    if spec.task == EXTERNAL:
        return spec.direction or "minimize"
    known = task_info(spec.task).direction(spec.objective)
    if spec.direction is not None and spec.direction != known:
        raise SpecError("direction", f"task {spec.task!r} {known}s {spec.objective!r}, not "
                        f"{spec.direction}s it")
    return known
