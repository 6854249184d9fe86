"""The API's read path: a page of studies, or of one study's trials, in a few queries each.

Counts and best trials come from the tables the database keeps up to date (``stats``); a page
of trials reads only the page's rows. So a request costs the same whether a study holds a
hundred trials or a hundred thousand. Nothing here writes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from optuna.distributions import BaseDistribution, json_to_distribution

from lrtune import optuna_internals as internals
from lrtune import study as names
from lrtune.store import stats

T = internals.TRIALS


@dataclass(frozen=True)
class BestTrial:
    trial_id: int
    number: int
    value: float
    params: dict[str, Any]


@dataclass(frozen=True)
class Summary:
    """What a study page shows of its trials; ``optuna_id`` None: its Optuna study is gone."""

    optuna_id: int | None
    counts: dict[str, int] = field(default_factory=dict)
    best: BestTrial | None = None


@dataclass(frozen=True)
class TrialRow:
    trial_id: int
    number: int
    state: str
    params: dict[str, Any]
    value: float | None
    reason: str | None
    retry_of: int | None
    started_at: datetime | None
    finished_at: datetime | None


@lru_cache(maxsize=4096)
def _distribution(distribution_json: str) -> BaseDistribution:
    return json_to_distribution(distribution_json)


def optuna_ids(conn: sa.Connection, study_names: Sequence[str]) -> dict[str, int]:
    """Optuna study ids by name (by name: an id of a study deleted behind lrtune's back may
    have been given to another)."""
    if not study_names:
        return {}
    s = internals.STUDIES
    return {name: int(sid) for sid, name in conn.execute(
        sa.select(s.c.study_id, s.c.study_name).where(s.c.study_name.in_(study_names)))}


def params_of(conn: sa.Connection, trial_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    p = internals.PARAMS
    found: dict[int, dict[str, Any]] = {i: {} for i in trial_ids}
    if trial_ids:
        for trial_id, name, value, kind in conn.execute(
                sa.select(p.c.trial_id, p.c.param_name, p.c.param_value, p.c.distribution_json)
                .where(p.c.trial_id.in_(trial_ids))):
            found[trial_id][name] = _distribution(kind).to_external_repr(value)
    return found


def summaries(conn: sa.Connection, study_names: Sequence[str]) -> dict[str, Summary]:
    """Counts per state and the best trial (with its parameters) of each named study."""
    ids = optuna_ids(conn, study_names)
    counts = stats.counts(conn, list(ids.values()))
    best = stats.best(conn, list(ids.values()))
    params = params_of(conn, [b.trial_id for b in best.values()])
    found = {}
    for name in study_names:
        sid = ids.get(name)
        if sid is None:
            found[name] = Summary(None)
            continue
        top = best.get(sid)
        found[name] = Summary(sid, counts[sid], None if top is None else BestTrial(
            top.trial_id, top.number, top.value, params[top.trial_id]))
    return found


def trial_page(conn: sa.Connection, optuna_id: int, limit: int, offset: int) -> list[TrialRow]:
    """The study's trials ``offset`` to ``offset + limit`` by number."""
    rows = conn.execute(sa.select(T.c.trial_id, T.c.number, T.c.state, T.c.datetime_start,
                                  T.c.datetime_complete)
                        .where(T.c.study_id == optuna_id).order_by(T.c.number)
                        .limit(limit).offset(offset)).all()
    ids = [int(r.trial_id) for r in rows]
    params = params_of(conn, ids)
    values: dict[int, float] = {}
    attrs: dict[int, dict[str, Any]] = {i: {} for i in ids}
    if ids:
        v = internals.VALUES
        for trial_id, value, kind in conn.execute(
                sa.select(v.c.trial_id, v.c.value, v.c.value_type)
                .where(v.c.trial_id.in_(ids), v.c.objective == 0)):
            values[trial_id] = value if kind.name == "FINITE" else \
                math.inf if kind.name == "INF_POS" else -math.inf
        u = internals.USER_ATTRS
        for trial_id, key, value_json in conn.execute(
                sa.select(u.c.trial_id, u.c.key, u.c.value_json)
                .where(u.c.trial_id.in_(ids), u.c.key.in_((names.ATTR_REASON, "retry_of")))):
            attrs[trial_id][key] = json.loads(value_json)
    return [TrialRow(int(r.trial_id), int(r.number), r.state.name, params[r.trial_id],
                     values.get(r.trial_id), attrs[r.trial_id].get(names.ATTR_REASON),
                     attrs[r.trial_id].get("retry_of"), r.datetime_start, r.datetime_complete)
            for r in rows]
