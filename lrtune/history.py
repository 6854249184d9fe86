"""Earlier studies' results as a sampler's history (``warm_start``), not as trials.

A study warm-started from earlier studies of the same task, horizon (``epochs``) and
objective lets its sampler see their COMPLETE trials beside its own: TPE models from the first
trial on instead of sampling its start-up trials at random. The earlier trials stay out of the
study (its budget, trials, best, dashboard and pruner see only its own): only the sampler's
calls get a view of the study that lists them too.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState


class _WithHistory(optuna.Study):
    """A study whose finished trials include ``_history`` (see ``history_view``)."""

    _history: list[FrozenTrial]

    def _get_trials(self, deepcopy: bool = True, states: Any = None,
                    use_cache: bool = False) -> list[FrozenTrial]:
        own = super()._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)
        if states is not None and TrialState.COMPLETE not in states:
            return own
        return [*self._history, *own]


def history_view(study: optuna.Study, history: list[FrozenTrial]) -> optuna.Study:
    """``study`` as its sampler sees it: the same study, its finished trials preceded by
    ``history``."""
    view = copy.copy(study)
    view.__class__ = _WithHistory
    vars(view)["_history"] = history
    return view


def history_trial(order: int, trial_id: int, value: float, params: dict[str, Any],
                  distributions: dict[str, BaseDistribution]) -> FrozenTrial:
    """An earlier study's COMPLETE trial as the new study's sampler reads it: its parameters
    in the new space, a negative number (older than any of the study's own) and its own
    trial id (distinct from every trial of the database)."""
    return FrozenTrial(number=-1 - order, state=TrialState.COMPLETE, value=value,
                       datetime_start=None, datetime_complete=None, params=params,
                       distributions=distributions, user_attrs={}, system_attrs={},
                       intermediate_values={}, trial_id=trial_id)


class HistorySampler(BaseSampler):
    """``base`` sampling with ``history`` among the study's finished trials."""

    def __init__(self, base: BaseSampler, history: Sequence[FrozenTrial]) -> None:
        self.base, self.history = base, list(history)

    def _view(self, study: optuna.Study) -> optuna.Study:
        return history_view(study, self.history)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial
                                    ) -> dict[str, BaseDistribution]:
        return self.base.infer_relative_search_space(self._view(study), trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self.base.sample_relative(self._view(study), trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self.base.sample_independent(self._view(study), trial, param_name,
                                            param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.base.before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()


def with_history(sampler: BaseSampler, history: Sequence[FrozenTrial]) -> BaseSampler:
    return HistorySampler(sampler, history) if history else sampler


def replaced(sampler: BaseSampler, make: Callable[[BaseSampler], BaseSampler]) -> BaseSampler:
    """``make(base)`` for ``sampler``'s base sampler, with ``sampler``'s history if any (a
    reseed keeps the history)."""
    if isinstance(sampler, HistorySampler):
        return HistorySampler(make(sampler.base), sampler.history)
    return make(sampler)
