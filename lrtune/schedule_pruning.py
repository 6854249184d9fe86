"""Schedule-aware pruning: judge a trial by the final value its LR path forecasts.

A schedule that decays late looks poor while its LR is high and gains most of its ground in the
last part of training; the percentile and median rules compare values at the same epoch and so
prune such schedules more than their final ranks warrant (docs/benchmarks.md, "Pruning").
``SchedulePruner`` knows each trial's whole LR path (the catalogue's pure formulas, from the
trial's ``config`` attribute or its parameters) and forecasts its final value with a
loss-vs-LR-area law in the spirit of Tissue et al. (2024, "Scaling law with learning rate
annealing") and Luo et al. (2025, "A multi-power law for loss curve prediction across learning
rate schedules"), in log units so that one law serves trials of any loss scale::

    log L(end) = log L*(e) + b0 + b1 * log(S(end) / S(e))
                           + b2 * log(r(e) / r(end)) + b3 * (r(e) - r(end))

``L*(e)`` is the trial's best value up to epoch ``e`` (one noisy epoch does not move the
forecast), ``r`` the LR at an epoch's end as a fraction of the trial's peak LR, ``S`` the area
under ``r`` in fractions of training (the law's forward area S1; its power law becomes a log
over a run's short span), ``r(e) / r(end)`` and ``r(e) - r(end)`` the LR reduction still to come
(the law's annealing term: relative and absolute). ``b`` is fitted per study on its completed
trials (whose whole curves and LR paths are known) by least squares: pooled over the decision
epochs, then per epoch shrunk towards the pooled fit. At epoch ``e`` a trial is pruned when its
forecast is worse than the kept quantile (75th percentile) of the completed trials' forecasts
from the same epoch by more than ``margin`` times the fit's residual spread there: like for
like, as the percentile rule compares values at the same epoch. With too few completed trials, a
path it cannot compute, or a fit that fails, the 75th-percentile rule decides as the
``percentile`` pruner would. The cost of a report: one LR path (cached per schedule), one dot
product and a percentile over the completed trials; the fit runs once per newly completed trial.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from lrtune.attrs import ATTR_CONFIG
from lrtune.errors import SpecError
from lrtune.schedules import FAMILIES, WARMUP, Schedule

PERCENTILE = 75.0  # the kept quantile, as the percentile pruner's
STARTUP = 5  # completed trials before any pruning, as the percentile pruner's
MIN_FIT = 8  # completed trials with whole curves and known paths before the law is trusted
RESOLUTION = 4096  # LR samples per path at most (the formulas' cost is O(samples))
MARGIN = 1.0  # residual spreads by which a forecast must be worse than the kept quantile
FLOOR = 1e-3  # LR ratios and areas below it count as it (a decay to zero stays finite)
RIDGE = 1e-3  # keeps the least squares solvable with few, alike trials
FIT_TRIALS = 512  # the latest completed trials the law is fitted on (a refit's cost is linear)
SHRINK = 1.0  # weight of the pooled fit in each decision epoch's own, in trials per feature

Path = tuple[tuple[float, ...], tuple[float, ...]]  # per epoch: r at its end, S at its end


def schedule_of(trial: FrozenTrial, direction: StudyDirection) -> Schedule | None:
    """The trial's schedule: from its stored config, else decoded from its parameters
    (``schedule``, ``<family>.<param>``, ``warmup.<param>``; defaults for the rest)."""
    config = trial.user_attrs.get(ATTR_CONFIG)
    try:
        if isinstance(config, dict) and "schedule" in config:
            return Schedule.from_dict(config["schedule"])
        family = trial.params.get("schedule")
        if family not in FAMILIES:
            return None
        params = {p.name: trial.params[f"{family}.{p.name}"]
                  for p in FAMILIES[family].params.params if f"{family}.{p.name}" in trial.params}
        if FAMILIES[family].metric_driven and FAMILIES[family].params.get("mode"):
            params["mode"] = "max" if direction == StudyDirection.MAXIMIZE else "min"
        warm = {p.name: trial.params[f"warmup.{p.name}"] for p in WARMUP.params
                if f"warmup.{p.name}" in trial.params}
        warmup = warm if warm or trial.params.get("warmup") is True else None
        return Schedule.build(family, params, warmup)
    except (SpecError, KeyError, TypeError, ValueError):
        return None


@lru_cache(maxsize=4096)
def _path(schedule_json: str, epochs: int, metrics: tuple[float, ...]) -> Path | None:
    schedule = Schedule.from_dict(json.loads(schedule_json))
    spe = max(1, min(16, RESOLUTION // epochs))  # samples per epoch: the formulas are per
    total = spe * epochs  # epoch or per fraction of training, so any resolution is the path
    fn = schedule.function()
    lrs = [fn(t, total, spe, 1.0, metrics) for t in range(total)]
    peak = max(lrs)
    if not peak > 0 or not all(math.isfinite(x) for x in lrs):
        return None
    ends, areas, area = [], [], 0.0
    for e in range(epochs):
        area += sum(lrs[e * spe:(e + 1) * spe]) / (peak * total)
        ends.append(lrs[(e + 1) * spe - 1] / peak)
        areas.append(area)
    return tuple(ends), tuple(areas)


def lr_path(trial: FrozenTrial, epochs: int, direction: StudyDirection) -> Path | None:
    """Per epoch of an ``epochs``-epoch run: the LR at its end as a fraction of the peak LR,
    and the area under that ratio up to its end (fraction of training). A metric-driven
    family (plateau) is followed as far as the trial's reports go, then held."""
    schedule = schedule_of(trial, direction)
    if schedule is None or epochs < 1:
        return None
    metrics: tuple[float, ...] = ()
    if FAMILIES[schedule.family].metric_driven:
        metrics = tuple(v for _, v in sorted(trial.intermediate_values.items()))
    try:
        return _path(json.dumps(schedule.to_dict(), sort_keys=True), epochs, metrics)
    except (ArithmeticError, ValueError):
        return None


def _transform(value: float, positive: bool) -> float:
    return math.log(value) if positive else value


def anchor(values: Sequence[float], epoch: int, sign: float) -> float:
    """The best of ``values[:epoch + 1]``: one noisy epoch does not move the forecast."""
    return sign * min(sign * v for v in values[:epoch + 1])


def features(path: Path, epoch: int) -> list[float]:
    """The law's terms for a forecast from ``epoch`` (0-based) to the last epoch: 1, the log
    of the LR area's growth, the LR reduction to come as a log ratio and as a difference."""
    ends, areas = path
    last = len(areas) - 1
    return [1.0, math.log(areas[last] / max(areas[epoch], FLOOR)),
            math.log(max(ends[epoch], FLOOR) / max(ends[last], FLOOR)), ends[epoch] - ends[last]]


class Law:
    """The fitted forecast, per decision epoch: the coefficients of ``features``, the spread
    (root mean square) of the fit's residuals and the completed trials' forecasts, all in
    the law's units (log of the objective where it is positive)."""

    def __init__(self, coef: dict[int, np.ndarray[Any, Any]], spread: dict[int, float],
                 forecasts: dict[int, list[float]], positive: bool, sign: float) -> None:
        self.coef, self.spread, self.forecasts = coef, spread, forecasts
        self.positive, self.sign = positive, sign

    def forecast(self, values: Sequence[float], path: Path, epoch: int) -> float:
        """The final value forecast from ``values[:epoch + 1]``, in the law's units."""
        now = _transform(anchor(values, epoch, self.sign), self.positive)
        return now + float(np.array(features(path, epoch)) @ self.coef[epoch])

    def value(self, forecast: float) -> float:
        """A forecast in the objective's units."""
        return math.exp(forecast) if self.positive else forecast


def _solve(x: np.ndarray[Any, Any], y: np.ndarray[Any, Any], prior: np.ndarray[Any, Any],
           weight: float) -> np.ndarray[Any, Any]:
    """Ridge least squares shrunk towards ``prior``."""
    eye = np.eye(x.shape[1])
    out: np.ndarray[Any, Any] = np.linalg.solve(x.T @ x + weight * eye, x.T @ y + weight * prior)
    return out


def fit(curves: Sequence[tuple[Sequence[float], Path]], first: int, positive: bool,
        sign: float) -> Law | None:
    """Least squares of the law on whole ``curves`` (values per epoch, path) at every decision
    epoch ``first`` .. second to last: pooled over the epochs, then each epoch's own fit
    shrunk towards the pooled one; None when it cannot be fitted."""
    rows: dict[int, list[list[float]]] = {}
    now: dict[int, list[float]] = {}
    end: dict[int, list[float]] = {}
    for values, path in curves:
        for e in range(first, len(values) - 1):
            rows.setdefault(e, []).append(features(path, e))
            now.setdefault(e, []).append(_transform(anchor(values, e, sign), positive))
            end.setdefault(e, []).append(_transform(values[-1], positive))
    if not rows:
        return None
    x_all = np.array([r for e in rows for r in rows[e]])
    y_all = np.array([b - a for e in rows for a, b in zip(now[e], end[e], strict=True)])
    if not (np.isfinite(x_all).all() and np.isfinite(y_all).all()):
        return None
    pooled = _solve(x_all, y_all, np.zeros(x_all.shape[1]), RIDGE * len(y_all))
    coef: dict[int, np.ndarray[Any, Any]] = {}
    spread: dict[int, float] = {}
    forecasts: dict[int, list[float]] = {}
    for e in rows:
        x, start = np.array(rows[e]), np.array(now[e])
        coef[e] = _solve(x, np.array(end[e]) - start, pooled, SHRINK * x.shape[1])
        fitted = start + x @ coef[e]
        spread[e] = float(np.sqrt(np.mean((np.array(end[e]) - fitted) ** 2)))
        forecasts[e] = [float(f) for f in fitted]
        if not (np.isfinite(coef[e]).all() and math.isfinite(spread[e])):
            return None
    return Law(coef, spread, forecasts, positive, sign)


class SchedulePruner(optuna.pruners.BasePruner):
    """Prune a trial whose forecast final value (see the module) is worse than the
    ``percentile`` of the completed trials' forecasts from the same epoch by ``margin``
    residual spreads. No decision before ``n_warmup_steps`` or ``n_startup_trials`` completed
    trials; the percentile rule of the same quantile while fewer than ``n_fit_trials``
    completed trials have whole curves and known LR paths, or when the fit fails. Built from
    ``epochs`` and numbers alone, so every process rebuilds the same pruner from a study's
    spec; the fitted law is kept per study and set of completed trials."""

    def __init__(self, epochs: int, percentile: float = PERCENTILE,
                 n_startup_trials: int = STARTUP, n_warmup_steps: int = 0,
                 n_fit_trials: int = MIN_FIT, margin: float = MARGIN) -> None:
        if epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {epochs=}")
        if not 0.0 <= percentile <= 100.0:
            raise ValueError(f"percentile must be in [0, 100], got {percentile=}")
        if n_startup_trials < 0 or n_warmup_steps < 0:
            raise ValueError(f"counts must not be negative, got {n_startup_trials=}, "
                             f"{n_warmup_steps=}")
        if n_fit_trials < 2 or not margin >= 0:
            raise ValueError(f"need n_fit_trials >= 2 and margin >= 0, got {n_fit_trials=}, "
                             f"{margin=}")
        self.epochs, self.percentile, self.margin = epochs, percentile, margin
        self.n_startup_trials, self.n_warmup_steps = n_startup_trials, n_warmup_steps
        self.n_fit_trials = n_fit_trials
        self.fallback = optuna.pruners.PercentilePruner(
            percentile, n_startup_trials=n_startup_trials, n_warmup_steps=n_warmup_steps)

    def law(self, completed: Sequence[FrozenTrial], direction: StudyDirection,
            study_name: str = "") -> Law | None:
        """The law fitted on ``completed``, or None; fitted once per study and set of
        completed trials (a report only looks it up)."""
        key = (study_name, self.epochs, self.n_warmup_steps, direction,
               tuple((t.number, t.value) for t in completed))
        if key in _LAWS:
            _LAWS.move_to_end(key)
            return _LAWS[key]
        curves = []
        for t in completed:
            values = [t.intermediate_values.get(e) for e in range(self.epochs)]
            path = lr_path(t, self.epochs, direction)
            if path is not None and all(v is not None and math.isfinite(v) for v in values):
                curves.append(([float(v) for v in values if v is not None], path))
        law = None
        if len(curves) >= self.n_fit_trials:
            positive = all(v > 0 for values, _ in curves for v in values)
            sign = -1.0 if direction == StudyDirection.MAXIMIZE else 1.0
            law = fit(curves, self.n_warmup_steps, positive, sign)
        _LAWS[key] = law
        while len(_LAWS) > LAWS_KEPT:
            _LAWS.popitem(last=False)
        return law

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self.n_warmup_steps or step >= self.epochs - 1:
            return False
        completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(completed) < max(1, self.n_startup_trials):
            return False
        values = [trial.intermediate_values.get(e) for e in range(step + 1)]
        if any(v is None or math.isnan(v) for v in values):
            return self.fallback.prune(study, trial)
        now = [float(v) for v in values if v is not None]
        recent = sorted(completed, key=lambda t: t.number)[-FIT_TRIALS:]
        law = self.law(recent, study.direction, study.study_name)
        path = lr_path(trial, self.epochs, study.direction)
        if (path is None or law is None or step not in law.coef
                or (law.positive and min(now) <= 0) or not math.isfinite(sum(now))):
            return self.fallback.prune(study, trial)
        kept = float(np.percentile([law.sign * f for f in law.forecasts[step]], self.percentile))
        return law.sign * law.forecast(now, path, step) > kept + self.margin * law.spread[step]


_LAWS: OrderedDict[tuple[Any, ...], Law | None] = OrderedDict()
LAWS_KEPT = 64  # fitted laws kept per process (one per study and set of completed trials)
