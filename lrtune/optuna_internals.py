"""Every private name of Optuna that lrtune relies on, in this one module.

Optuna's public API has no trial id on a ``Trial``, no way to create many trials in one
statement, to read a study's trials without copying them, or to draw one parameter group of
a grouped TPE. lrtune needs each of those; here they are, each behind a small function, and
``tests/lrtune/test_optuna_internals.py`` exercises every one of them (so an Optuna release that
changes one fails a test), while a contract test keeps every other module off Optuna's private
names. The Optuna versions tested are pinned in ``pyproject.toml``.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import optuna
import sqlalchemy as sa
from optuna.search_space.group_decomposed import _SearchSpaceGroup
from optuna.storages._rdb import models
from optuna.study.study import _SYSTEM_ATTR_METRIC_NAMES, _ThreadLocalStudyAttribute
from optuna.trial import FrozenTrial, TrialState

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution
    from optuna.samplers import TPESampler


def _table(model: Any) -> sa.Table:
    table: sa.Table = model.__table__
    return table


# Optuna's tables, for statements that cover many rows at once.
STUDIES = _table(models.StudyModel)
STUDY_DIRECTIONS = _table(models.StudyDirectionModel)
STUDY_USER_ATTRS = _table(models.StudyUserAttributeModel)
STUDY_SYSTEM_ATTRS = _table(models.StudySystemAttributeModel)
TRIALS = _table(models.TrialModel)
VALUES = _table(models.TrialValueModel)
PARAMS = _table(models.TrialParamModel)
INTERMEDIATE = _table(models.TrialIntermediateValueModel)
USER_ATTRS = _table(models.TrialUserAttributeModel)
SYSTEM_ATTRS = _table(models.TrialSystemAttributeModel)
HEARTBEATS = _table(models.TrialHeartbeatModel)
TRIAL_TABLES = (HEARTBEATS, INTERMEDIATE, VALUES, PARAMS, SYSTEM_ATTRS, USER_ATTRS)
STUDY_TABLES = (STUDY_DIRECTIONS, STUDY_USER_ATTRS, STUDY_SYSTEM_ATTRS)
METRIC_NAMES_ATTR = _SYSTEM_ATTR_METRIC_NAMES  # study system attr: the objectives' names


def stored_value(value: float) -> tuple[float | None, Any]:
    """A trial value as Optuna stores it (infinities as a kind, not a number)."""
    stored, kind = models.TrialValueModel.value_to_stored_repr(value)
    return stored, kind


def stored_intermediate(value: float) -> tuple[float | None, Any]:
    """An intermediate value as Optuna stores it (NaN and infinities as a kind)."""
    stored, kind = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(value)
    return stored, kind


def intermediate_from_stored(stored: float | None, kind: Any) -> float:
    value: float = models.TrialIntermediateValueModel.stored_repr_to_intermediate_value(
        stored, kind)
    return value


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage's id of a trial (``Trial`` has none in Optuna's public API)."""
    return int(trial._trial_id)


def study_id(study: optuna.Study) -> int:
    return int(study._study_id)


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    return study._storage


def new_trial(study: optuna.Study) -> optuna.Trial:
    """A new RUNNING trial without ``study.ask()``'s scan of every unfinished trial for a
    WAITING one (quadratic while a pack of K trials is RUNNING): for a caller that knows no
    trial waits."""
    study._thread_local.cached_all_trials = None
    return optuna.Trial(study, study._storage.create_new_trial(study._study_id))


def study_view(study: optuna.Study, storage: object) -> optuna.Study:
    """``study`` (same sampler, pruner, ids) reading and writing through ``storage``, with
    its own cache of trials. ``storage`` stands in for a ``BaseStorage`` by delegation."""
    view = copy.copy(study)
    vars(view)["_storage"] = storage
    view._thread_local = _ThreadLocalStudyAttribute()
    return view


def finished_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The study's COMPLETE and PRUNED trials, uncopied, from the study's own trial cache."""
    trials: list[FrozenTrial] = study._get_trials(
        deepcopy=False, use_cache=True, states=(TrialState.COMPLETE, TrialState.PRUNED))
    return trials


def distribution_contains(distribution: BaseDistribution, value: Any) -> bool:
    """Whether ``value`` (external form) lies in ``distribution``."""
    return bool(distribution._contains(distribution.to_internal_repr(value)))


def search_space_group() -> _SearchSpaceGroup:
    """An empty group decomposition of a search space, as Optuna's grouped TPE keeps one."""
    return _SearchSpaceGroup()


def set_tpe_groups(sampler: TPESampler, groups: _SearchSpaceGroup | None) -> None:
    """The groups a grouped TPE samples relative parameters by."""
    sampler._search_space_group = groups


def tpe_groups(sampler: TPESampler) -> _SearchSpaceGroup | None:
    groups: _SearchSpaceGroup | None = sampler._search_space_group
    return groups


def sample_tpe_group(sampler: TPESampler, study: optuna.Study, trial: FrozenTrial,
                     group: dict[str, BaseDistribution]) -> dict[str, Any]:
    """One joint TPE draw of ``group``'s parameters ({} during the start-up trials)."""
    drawn: dict[str, Any] = sampler._sample_relative(study, trial, group)
    return drawn
