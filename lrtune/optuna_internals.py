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
import functools
import json
from collections.abc import Callable, Container, Sequence
from typing import TYPE_CHECKING, Any

import optuna
import sqlalchemy as sa
from optuna.distributions import BaseDistribution
from optuna.search_space.group_decomposed import _SearchSpaceGroup
from optuna.storages._rdb import models
from optuna.study.study import _SYSTEM_ATTR_METRIC_NAMES, _ThreadLocalStudyAttribute
from optuna.trial import FrozenTrial, TrialState

if TYPE_CHECKING:
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


def read_trials(conn: sa.Connection, trial_ids: Sequence[int]) -> list[FrozenTrial]:
    """These trials as Optuna's ``RDBStorage.get_trial`` builds them, by number: six plain
    statements on ``conn`` for all of them, where Optuna's ORM lazily loads each relation of
    each trial in a transaction of its own (a third of a lease report's cost)."""
    if not trial_ids:
        return []
    ids = sa.bindparam("ids", [int(i) for i in trial_ids], expanding=True, literal_execute=True,
                       type_=sa.Integer)  # written into the statement (see store.trials.ids_in)

    def rows(table: sa.Table, *columns: str) -> dict[int, list[Any]]:
        found: dict[int, list[Any]] = {}
        query = sa.select(table.c.trial_id, *(table.c[c] for c in columns)).where(
            table.c.trial_id.in_(ids))
        order = {"param_id", "step"} & set(table.c.keys())
        query = query.order_by(*(table.c[c] for c in sorted(order)))
        for row in conn.execute(query):
            found.setdefault(int(row[0]), []).append(row[1:])
        return found

    values = rows(VALUES, "objective", "value", "value_type")
    params = rows(PARAMS, "param_name", "param_value", "distribution_json")
    users = rows(USER_ATTRS, "key", "value_json")
    systems = rows(SYSTEM_ATTRS, "key", "value_json")
    steps = rows(INTERMEDIATE, "step", "intermediate_value", "intermediate_value_type")
    trials = []
    for row in conn.execute(sa.select(TRIALS).where(TRIALS.c.trial_id.in_(ids))
                            .order_by(TRIALS.c.number)):
        tid = int(row.trial_id)
        ordered: list[float] | None = None
        if tid in values:
            ordered = [0.0] * len(values[tid])
            for objective, value, kind in values[tid]:
                ordered[objective] = models.TrialValueModel.stored_repr_to_value(value, kind)
        kinds = {name: _distribution(text) for name, _, text in params.get(tid, [])}
        trials.append(FrozenTrial(
            number=row.number, state=row.state, value=None, values=ordered,
            datetime_start=row.datetime_start, datetime_complete=row.datetime_complete,
            params={name: kinds[name].to_external_repr(value)
                    for name, value, _ in params.get(tid, [])},
            distributions=kinds,
            user_attrs={key: json.loads(text) for key, text in users.get(tid, [])},
            system_attrs={key: json.loads(text) for key, text in systems.get(tid, [])},
            intermediate_values={step: intermediate_from_stored(value, kind)
                                 for step, value, kind in steps.get(tid, [])},
            trial_id=tid))
    return trials


@functools.lru_cache(maxsize=4096)
def _distribution(text: str) -> BaseDistribution:
    return optuna.distributions.json_to_distribution(text)


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


def trials_view(study: optuna.Study,
                keep: Callable[[list[FrozenTrial]], list[FrozenTrial]]) -> optuna.Study:
    """``study`` whose trial reads as samplers make them (``_get_trials``) show only what
    ``keep`` keeps of all the study's trials (then filtered by the states asked for)."""
    view = copy.copy(study)
    read = study._get_trials

    def get_trials(deepcopy: bool = True, states: Container[TrialState] | None = None,
                   use_cache: bool = False) -> list[FrozenTrial]:
        kept = keep(read(deepcopy=deepcopy, states=None, use_cache=use_cache))
        return kept if states is None else [t for t in kept if t.state in states]

    vars(view)["_get_trials"] = get_trials
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
