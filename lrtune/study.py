"""Optuna pieces chosen by a study spec: sampler, pruner, direction; stored attribute names."""

from __future__ import annotations

import warnings
from typing import Any

import optuna

from lrtune.errors import SpecError
from lrtune.schedules import FAMILIES, Schedule
from lrtune.spec import PrunerSpec, SamplerSpec, StudySpec
from lrtune.tasks import task_info

# Trial user attributes lrtune writes.
ATTR_REASON = "reason"  # diverged | failed: <error> | lost: <worker gone>
ATTR_LR_CURVE = "lr_curve"  # LR at the first step of each epoch
ATTR_METRICS = "metrics"  # last epoch's metrics
ATTR_CONFIG = "config"  # the decoded TrialConfig (schedule + optimizer)
ATTR_STEPS_PER_EPOCH = "steps_per_epoch"


# Study user attributes lrtune writes (shown in the dashboard).
STUDY_ATTR_SPEC = "lrtune_spec"
STUDY_ATTR_LR_RANGE = "lrtune_lr_range"  # {"low", "high", "by_optimizer"} of the range test


def make_sampler(spec: SamplerSpec) -> optuna.samplers.BaseSampler:
    if spec.name == "random":
        return optuna.samplers.RandomSampler(seed=spec.seed)
    if spec.name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=spec.seed, warn_independent_sampling=False)
    if spec.name == "qmc":
        return optuna.samplers.QMCSampler(seed=spec.seed, warn_independent_sampling=False)
    with warnings.catch_warnings():  # multivariate/group/constant_liar are "experimental"
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=spec.seed, multivariate=True, group=True,
                                          constant_liar=True, n_startup_trials=10)


PHASES = (0.5, 0.1)  # LR relative to its peak so far: high | decaying | annealed


def schedule_of(params: dict[str, Any]) -> Schedule | None:
    """The trial's schedule from its sampled parameters (defaults for the rest)."""
    family = params.get("schedule")
    if family not in FAMILIES:
        return None
    own = {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith(f"{family}.")}
    warm = {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith("warmup.")}
    try:
        return Schedule.build(family, own, warm or None)
    except SpecError:
        return None


def lr_phase(trial: optuna.trial.FrozenTrial, epoch: int, epochs: int) -> int | None:
    """Where the trial's schedule stands at ``epoch``: 0 high, 1 decaying, 2 annealed."""
    schedule = schedule_of(trial.params)
    if schedule is None:
        return None
    metrics = [trial.intermediate_values[k] for k in sorted(trial.intermediate_values)]
    fn = schedule.function()
    try:
        lrs = [fn(t, epochs, 1, 1.0, metrics) for t in range(epoch + 1)]
    except (ArithmeticError, ValueError, IndexError):
        return None
    ratio = lrs[-1] / max(lrs)
    return sum(ratio < edge for edge in PHASES)


class _PhasePeers:
    """The trials a progress-aware pruner compares with: those in the same LR phase."""

    def __init__(self, study: optuna.Study, phase: int, epoch: int, epochs: int) -> None:
        self.study, self.phase, self.epoch, self.epochs = study, phase, epoch, epochs

    @property
    def direction(self) -> optuna.study.StudyDirection:
        return self.study.direction

    def get_trials(self, deepcopy: bool = True, states: Any = None
                   ) -> list[optuna.trial.FrozenTrial]:
        return [t for t in self.study.get_trials(deepcopy=False, states=states)
                if lr_phase(t, self.epoch, self.epochs) == self.phase]


class ProgressMedianPruner(optuna.pruners.BasePruner):
    """The median rule among trials at the same point of their schedules.

    A schedule that keeps its LR high until late (cosine, step, WSD, one-cycle) has a worse
    loss early on than one that has already decayed, whatever its final loss; the plain median
    rule compares them anyway. Here a trial at epoch ``s`` is compared only with complete
    trials whose LR at ``s``, relative to its peak so far, is in the same phase (high ≥ 0.5,
    decaying ≥ 0.1, annealed), from the pure schedule formulas; with fewer than ``n_peers``
    such trials, the plain rule decides.
    """

    def __init__(self, epochs: int, n_startup_trials: int, n_warmup_steps: int,
                 n_peers: int = 3) -> None:
        self.epochs, self.n_peers = epochs, n_peers
        self.plain = optuna.pruners.MedianPruner(n_startup_trials=n_startup_trials,
                                                 n_warmup_steps=n_warmup_steps)
        self.peers = optuna.pruners.MedianPruner(n_startup_trials=n_peers,
                                                 n_warmup_steps=n_warmup_steps)

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        epoch = trial.last_step
        phase = lr_phase(trial, epoch, self.epochs) if epoch is not None else None
        if phase is None or epoch is None:
            return self.plain.prune(study, trial)
        view = _PhasePeers(study, phase, epoch, self.epochs)
        if len(view.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) < self.n_peers:
            return self.plain.prune(study, trial)
        return self.peers.prune(view, trial)  # type: ignore[arg-type]


def make_pruner(spec: PrunerSpec, epochs: int) -> optuna.pruners.BasePruner:
    if spec.name == "none":
        return optuna.pruners.NopPruner()
    if spec.name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    if spec.name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1)
    if spec.name == "progress_median":
        return ProgressMedianPruner(epochs, n_startup_trials=5,
                                    n_warmup_steps=max(1, epochs // 4))
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=max(1, epochs // 4))


def direction(spec: StudySpec) -> str:
    return task_info(spec.task).direction(spec.objective)
