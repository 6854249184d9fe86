"""Warm starts: the best configurations of earlier studies queued as a new study's first
trials (``"warm_start": {"studies": [...], "top": N}``).

Each earlier study's COMPLETE trials are ranked by its own objective and direction (values of
different studies are not compared); the new study takes their best in turn (the best of each,
then the second of each, …) until it has ``top``, skipping a configuration the new space does
not hold (another family, an optimizer it does not search, a value outside its ranges) or one
taken already. Schedules are written in fractions of training, so a configuration carries
over to another number of epochs. Each is queued WAITING with its parameters fixed, so it
counts in the budget like any trial and is claimed before new samples. Where an earlier study
has the same task, horizon and objective, its results are also the new study's sampler's
history (``history``; lrtune/history.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from optuna.distributions import json_to_distribution
from optuna.trial import FrozenTrial, TrialState

from lrtune import optuna_internals as internals
from lrtune import study as names
from lrtune.errors import SpecError
from lrtune.history import history_trial
from lrtune.space import SearchSpace
from lrtune.spec import StudySpec
from lrtune.tables import studies

DEFAULT_TOP = 5
HISTORY = 1000  # earlier trials a study's sampler reads, all its sources together (TPE's
# cost per sample grows with them)
CANDIDATES = 4  # trials read per configuration wanted: some may not fit the new space
ATTR_WARM_START = "warm_start"  # {"study": id, "number": n}: where a queued trial came from


@dataclass(frozen=True)
class WarmConfig:
    params: dict[str, Any]
    study_id: int
    number: int


def warm_configs(conn: sa.Connection, spec: StudySpec) -> list[WarmConfig]:
    """The configurations ``spec.warm_start`` asks for, best first (see the module)."""
    warm = spec.warm_start
    if warm is None:
        return []
    top = warm.top or min(DEFAULT_TOP, spec.n_trials)
    space = SearchSpace(spec.space, names.direction(spec))
    ranked = [_ranked(conn, space, study_id, top, f"warm_start.studies.{i}")
              for i, study_id in enumerate(warm.studies)]
    taken: list[WarmConfig] = []
    seen: set[str] = set()
    for rank in range(top):
        for configs in ranked:
            if rank < len(configs) and len(taken) < top:
                key = json.dumps(configs[rank].params, sort_keys=True)
                if key not in seen:
                    seen.add(key)
                    taken.append(configs[rank])
    return taken


def _ranked(conn: sa.Connection, space: SearchSpace, study_id: int, top: int,
            field: str) -> list[WarmConfig]:
    source = _source(conn, study_id)
    if source is None:
        raise SpecError(field, f"no study {study_id}")
    name, spec = source
    best = _best(conn, name, spec, top * CANDIDATES)
    if best is None:
        raise SpecError(field, f"study {study_id} has no trials any more")
    configs: list[WarmConfig] = []
    for _, number, _, params in best:
        fitting = space.fitting(params)
        if fitting is not None and len(configs) < top:
            configs.append(WarmConfig(fitting, study_id, number))
    return configs


def history(conn: sa.Connection, spec: StudySpec) -> list[FrozenTrial]:
    """The COMPLETE trials of ``spec.warm_start``'s studies that share its task, horizon and
    objective (their values compare), best first, up to ``HISTORY`` in all (shared evenly),
    in the new space: its sampler's history (lrtune/history.py)."""
    if spec.warm_start is None:
        return []
    each = max(1, HISTORY // len(spec.warm_start.studies))
    space = SearchSpace(spec.space, names.direction(spec))
    trials: list[FrozenTrial] = []
    for study_id in spec.warm_start.studies:
        source = _source(conn, study_id)
        if source is None:
            continue  # deleted since
        name, earlier = source
        if (earlier.task, earlier.epochs, earlier.objective) != \
                (spec.task, spec.epochs, spec.objective):
            continue
        for trial_id, _, value, params in _best(conn, name, earlier, each) or []:
            fitted = space.fitted(params)
            if fitted is not None:
                trials.append(history_trial(len(trials), trial_id, value, *fitted))
    return trials


def _source(conn: sa.Connection, study_id: int) -> tuple[str, StudySpec] | None:
    row = conn.execute(sa.select(studies.c.name, studies.c.spec).where(
        studies.c.id == study_id)).first()
    return None if row is None else (row.name, StudySpec.model_validate(row.spec))


def _best(conn: sa.Connection, name: str, spec: StudySpec, limit: int
          ) -> list[tuple[int, int, float, dict[str, Any]]] | None:
    """A study's best ``limit`` COMPLETE trials by its own direction: trial id, number,
    value, parameters; None when its Optuna study is gone."""
    descending = names.direction(spec) == "maximize"
    t, v, p = internals.TRIALS, internals.VALUES, internals.PARAMS
    optuna_id = conn.execute(sa.select(internals.STUDIES.c.study_id).where(
        internals.STUDIES.c.study_name == name)).scalar()
    if optuna_id is None:
        return None
    best = conn.execute(
        sa.select(t.c.trial_id, t.c.number, v.c.value).join(v, v.c.trial_id == t.c.trial_id)
        .where(t.c.study_id == optuna_id, t.c.state == TrialState.COMPLETE,
               v.c.objective == 0, v.c.value.is_not(None))
        .order_by(v.c.value.desc() if descending else v.c.value, t.c.number)
        .limit(limit)).all()
    params: dict[int, dict[str, Any]] = {int(tid): {} for tid, _, _ in best}
    for tid, param, value, distribution in conn.execute(
            sa.select(p.c.trial_id, p.c.param_name, p.c.param_value, p.c.distribution_json)
            .where(p.c.trial_id.in_(list(params)))):
        params[int(tid)][param] = json_to_distribution(distribution).to_external_repr(value)
    return [(int(tid), int(number), float(value), params[int(tid)])
            for tid, number, value in best]


def queue(conn: sa.Connection, optuna_study_id: int, configs: Sequence[WarmConfig]) -> None:
    """The configurations as the study's first trials: WAITING, parameters fixed, their
    origin as a user attribute (shown in the dashboard)."""
    if not configs:
        return
    rows = [{"number": i, "study_id": optuna_study_id, "state": TrialState.WAITING}
            for i in range(len(configs))]
    ids = conn.execute(internals.TRIALS.insert().returning(
        internals.TRIALS.c.trial_id, sort_by_parameter_order=True), rows).scalars().all()
    conn.execute(internals.SYSTEM_ATTRS.insert(), [
        {"trial_id": tid, "key": "fixed_params", "value_json": json.dumps(c.params)}
        for tid, c in zip(ids, configs, strict=True)])
    conn.execute(internals.USER_ATTRS.insert(), [
        {"trial_id": tid, "key": ATTR_WARM_START,
         "value_json": json.dumps({"study": c.study_id, "number": c.number})}
        for tid, c in zip(ids, configs, strict=True)])
