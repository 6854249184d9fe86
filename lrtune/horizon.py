"""The horizon ladder: whole schedules on short horizons first, the best promoted.

Schedules are written in fractions of training, so a trial can run its whole schedule (warmup,
plateau, final decay) on a fraction of the study's optimizer steps. Rung ``k`` of ``R`` runs
``eta ** -(R - 1 - k)`` of them (1/9, 1/3 and 1 by default), at least ``MIN_STEPS``. Each claim
asks ``next_rung`` (asynchronous successive halving, as ASHA): the best trial of the highest
rung below the top that ranks in the top ``1 / eta`` of its rung's finished runs and was not
promoted yet runs again on the next rung with the same parameters (its base LR times
``lr_shift``: 1, as measured, see ``LR_EXPONENT``); with none to promote, a new configuration
starts on rung 0.
The budget's last slots (``endgame``) run the best unpromoted trials on the full horizon at
once, so a study always ends with full-horizon results.

Every run is one trial of ``n_trials``. A run below the top rung ends PRUNED with its value
and the reason ``rung k of R``; only full-horizon runs end COMPLETE, so only they can be the
study's best. The rung is the trial's ``horizon`` user attribute (API, dashboard).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from lrtune.attrs import ATTR_HORIZON
from lrtune.spec import LrRange, PrunerSpec, StudySpec

ETA = 3  # runs of a rung per promotion; also the ratio of neighbouring rungs' horizons
RUNGS = 3
MIN_STEPS = 16  # a rung's fewest optimizer steps (a schedule's phases need some)
# A promoted trial's LR is multiplied by (its new horizon / its old) ** -LR_EXPONENT. Measured
# (bench/horizon_lr.py; docs/benchmarks.md, "Budget-aware search"): the winning LR grows as the
# horizon shrinks on digits-mlp (exponent 0.31) but not on charlm (-0.12, shifts of both
# signs), and the digits law applied in the ladder made its result worse (median 0.0802 vs
# 0.0749 uncorrected, 10 seeds): no correction. Frozen with ETA and RUNGS before the held-out
# task's first run.
LR_EXPONENT = 0.0


@dataclass(frozen=True)
class Rung:
    """Where one run of the ladder stands: rung ``rung`` of ``rungs`` on ``fraction`` of the
    study's steps; ``params`` fixed (a promotion of trial ``promoted_from``) or sampled."""

    rung: int
    rungs: int
    fraction: float
    promoted_from: int | None = None
    params: dict[str, Any] | None = None

    @property
    def top(self) -> bool:
        return self.rung == self.rungs - 1

    def steps(self, total_steps: int) -> int:
        """The run's optimizer steps of a study's ``total_steps``."""
        if self.top:
            return total_steps
        return min(total_steps, max(MIN_STEPS, round(self.fraction * total_steps)))

    def reason(self) -> str:
        return f"rung {self.rung} of {self.rungs}: whole schedule on {self.fraction:.3g} " \
               "of the steps"

    def attr(self) -> dict[str, Any]:
        return {"rung": self.rung, "rungs": self.rungs, "fraction": self.fraction,
                "promoted_from": self.promoted_from}

    @classmethod
    def from_attr(cls, value: Any) -> Rung | None:
        """The rung a trial's ``horizon`` attribute says; None when it has none, or one that
        lrtune did not write (a trial written behind its back breaks no claim or read)."""
        try:
            rung = cls(int(value["rung"]), int(value["rungs"]), float(value["fraction"]),
                       None if value.get("promoted_from") is None
                       else int(value["promoted_from"]))
        except (KeyError, TypeError, ValueError, AttributeError):
            return None
        ok = 0 <= rung.rung < rung.rungs and 0 < rung.fraction <= 1
        return rung if ok else None


def rung_of(trial: optuna.Trial | FrozenTrial) -> Rung | None:
    """The ladder's rung of a trial (its ``horizon`` attribute), if it has one."""
    return Rung.from_attr(trial.user_attrs.get(ATTR_HORIZON))


def shape(spec: PrunerSpec) -> tuple[int, int]:
    """The ladder's ``(rungs, eta)``."""
    return (RUNGS if spec.rungs is None else spec.rungs), (ETA if spec.eta is None else spec.eta)


def fraction(rung: int, rungs: int, eta: int) -> float:
    return float(eta) ** -(rungs - 1 - rung)


def lr_shift(old: float, new: float) -> float:
    """The factor on a promoted trial's base LR, from ``old`` to ``new`` horizon fraction."""
    return float((new / old) ** -LR_EXPONENT)


def lr_bounds(spec: StudySpec) -> tuple[float, float] | None:
    """The base LR's search range of a spec whose range is known (not "auto" yet)."""
    lr = spec.space.lr
    return (lr.low, lr.high) if isinstance(lr, LrRange) else None


def endgame(n_trials: int, rungs: int, eta: int) -> int:
    """The budget's last slots that go to full-horizon runs."""
    return max(1, n_trials // int(eta ** rungs))


@dataclass(frozen=True)
class Run:
    """What the ladder knows of one of the study's runs: its rung, whether it ended
    (COMPLETE or PRUNED) and its value then (None: diverged, or not ended). ``ref`` finds its
    parameters (a FrozenTrial, or a trial id)."""

    number: int
    rung: Rung
    ended: bool
    score: float | None
    ref: Any = None


def runs_of(trials: Sequence[FrozenTrial]) -> list[Run]:
    """The ladder's runs among Optuna trials (``ref``: the trial itself)."""
    runs = []
    for trial in trials:
        rung = rung_of(trial)
        if rung is None:
            continue
        score = trial.value
        if score is None and trial.intermediate_values:
            score = trial.intermediate_values[max(trial.intermediate_values)]
        runs.append(Run(trial.number, rung, trial.state in (TrialState.COMPLETE,
                                                              TrialState.PRUNED), score, trial))
    return runs


def latest_runs(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Each configuration's latest run: ``trials`` without those promoted to a higher rung.
    What TPE models in a ladder study: one point per configuration, ranked by how far it
    went and its value there (Optuna ranks a PRUNED trial by its last step), not the same
    parameters once among the best and again among the rest."""
    promoted = promoted_parents(rung_of(t) for t in trials
                                if ATTR_HORIZON in t.user_attrs)  # most have none
    return [t for t in trials if t.number not in promoted] if promoted else trials


def promoted_parents(rungs: Iterable[Rung | None]) -> set[int]:
    """The trial numbers that ``rungs`` were promoted from."""
    return {r.promoted_from for r in rungs if r is not None and r.promoted_from is not None}


def params_of_trial(run: Run) -> dict[str, Any]:
    return dict(run.ref.params)


def next_rung(runs: Sequence[Run], spec: PrunerSpec, direction: StudyDirection,
              slots_left: int, n_trials: int, lr_bounds: tuple[float, float] | None = None,
              params_of: Callable[[Run], dict[str, Any]] = params_of_trial) -> Rung:
    """The rung of the study's next run, and what it runs (see the module's doc).
    ``slots_left``: the budget's slots not yet taken, this one included; ``lr_bounds``: the
    base LR's search range (a corrected LR stays inside it); ``params_of``: a promoted
    run's parameters (read for that run alone)."""
    rungs, eta = shape(spec)
    sign = 1.0 if direction == StudyDirection.MINIMIZE else -1.0
    runs = [run for run in runs if run.rung.rungs == rungs]
    promoted = promoted_parents(run.rung for run in runs)
    finished: list[list[tuple[float, Run]]] = [[] for _ in range(rungs)]
    ended = [0] * rungs
    last = rungs - 1
    for run in runs:
        if run.ended and run.rung.rung < last:
            ended[run.rung.rung] += 1
            if run.score is not None and math.isfinite(run.score):
                finished[run.rung.rung].append((sign * run.score, run))
    for ranked in finished:
        ranked.sort(key=lambda pair: (pair[0], pair[1].number))
    if slots_left <= endgame(n_trials, rungs, eta):
        for rung in range(last - 1, -1, -1):
            for _, run in finished[rung]:
                if run.number not in promoted:
                    return _promote(run, params_of(run), rung, last, rungs, eta, lr_bounds)
        return Rung(last, rungs, 1.0)
    for rung in range(last - 1, -1, -1):
        for _, run in finished[rung][:ended[rung] // eta]:
            if run.number not in promoted:
                return _promote(run, params_of(run), rung, rung + 1, rungs, eta, lr_bounds)
    return Rung(0, rungs, fraction(0, rungs, eta))


def _promote(run: Run, params: dict[str, Any], old: int, new: int, rungs: int, eta: int,
             lr_bounds: tuple[float, float] | None) -> Rung:
    to = fraction(new, rungs, eta)
    if "lr" in params:
        lr = float(params["lr"]) * lr_shift(fraction(old, rungs, eta), to)
        if lr_bounds is not None:
            lr = min(max(lr, lr_bounds[0]), lr_bounds[1])
        params["lr"] = lr
    return Rung(new, rungs, to, run.number, params)


def start(study: optuna.Study, rung: Rung) -> optuna.Trial:
    """A new RUNNING trial of ``study`` for ``rung``: a promotion's parameters enqueued and
    asked (its sampler draws nothing), or a fresh draw. Call where no other trial WAITS (a
    claim under the study's lock pops the waiting first)."""
    if rung.params is not None:
        study.enqueue_trial(rung.params, user_attrs={ATTR_HORIZON: rung.attr()})
        return study.ask()
    trial = study.ask()
    trial.set_user_attr(ATTR_HORIZON, rung.attr())
    return trial
