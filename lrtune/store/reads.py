"""The API's read path: a page of studies, or of one study's trials, in a few queries each.

Counts and best trials come from the tables the database keeps up to date (``stats``); a page
of trials reads only the page's rows. So a request costs the same whether a study holds a
hundred trials or a hundred thousand. Nothing here writes.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
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
from lrtune.tables import study_best, trial_counts

T = internals.TRIALS
REASON = internals.USER_ATTRS.alias("reason")
RETRY_OF = internals.USER_ATTRS.alias("retry_of")
HORIZON = internals.USER_ATTRS.alias("horizon")


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
    horizon: dict[str, Any] | None = None  # a horizon ladder's rung


@lru_cache(maxsize=4096)
def _distribution(distribution_json: str) -> BaseDistribution:
    return json_to_distribution(distribution_json)


def params_of(conn: sa.Connection, trial_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    p = internals.PARAMS
    found: dict[int, dict[str, Any]] = {i: {} for i in trial_ids}
    if trial_ids:
        for trial_id, name, value, kind in conn.execute(
                sa.select(p.c.trial_id, p.c.param_name, p.c.param_value, p.c.distribution_json)
                .where(p.c.trial_id.in_(trial_ids))):
            found[trial_id][name] = _distribution(kind).to_external_repr(value)
    return found


class FinishedParams:
    """Parameters of finished trials, which never change, kept by trial id (the best
    trials of the studies shown are read again on every page)."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._kept: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, conn: sa.Connection, trial_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        with self._lock:
            found = {i: self._kept[i] for i in trial_ids if i in self._kept}
        missing = [i for i in trial_ids if i not in found]
        if missing:
            read = params_of(conn, missing)
            found.update(read)
            with self._lock:
                self._kept.update(read)
                while len(self._kept) > self.size:
                    self._kept.popitem(last=False)
        return found


def summarised(studies: sa.Subquery) -> sa.Select[Any]:
    """Each row of ``studies`` (rows of lrtune_studies) joined with its Optuna study's id,
    its counts per state (a row per state) and its best trial: one query for a whole page."""
    s, counts, best, t = internals.STUDIES, trial_counts, study_best, T
    return (sa.select(studies, s.c.study_id.label("optuna_id"), counts.c.state, counts.c.n,
                      best.c.trial_id.label("best_trial"), t.c.number.label("best_number"),
                      best.c.value.label("best_value"), best.c.value_type.label("best_kind"))
            .select_from(studies.outerjoin(s, s.c.study_name == studies.c.name)
                         .outerjoin(counts, counts.c.optuna_study_id == s.c.study_id)
                         .outerjoin(best, best.c.optuna_study_id == s.c.study_id)
                         .outerjoin(t, t.c.trial_id == best.c.trial_id))
            .order_by(studies.c.id))


def collect(conn: sa.Connection, rows: Sequence[sa.Row[Any]], kept: FinishedParams
            ) -> dict[int, tuple[sa.RowMapping, Summary]]:
    """The rows of a ``summarised`` query as (study row, summary) by study id, in order;
    one more query for best trials whose parameters are not kept yet."""
    found: dict[int, tuple[sa.RowMapping, int | None, dict[str, int]]] = {}
    tops: dict[int, tuple[int, int, float]] = {}
    for row in rows:
        m = row._mapping
        study = found.setdefault(m["id"], (m, m["optuna_id"], {}))
        if m["state"] is not None:
            study[2][m["state"]] = int(m["n"])
        if m["best_trial"] is not None:
            tops[m["id"]] = (int(m["best_trial"]), int(m["best_number"]),
                             stats.shown_value(m["best_value"], m["best_kind"]))
    params = kept.get(conn, [top[0] for top in tops.values()])  # COMPLETE: immutable
    return {study_id: (m, Summary(optuna_id, counts, None if (top := tops.get(study_id))
                                  is None else BestTrial(*top, params[top[0]])))
            for study_id, (m, optuna_id, counts) in found.items()}


def trial_page(conn: sa.Connection, optuna_id: int, limit: int, offset: int,
               kept: FinishedParams) -> list[TrialRow]:
    """The study's trials ``offset`` to ``offset + limit`` by number, with their value and
    reason: one query, and one more for parameters not kept yet."""
    v, reason, retry, rung = internals.VALUES, REASON, RETRY_OF, HORIZON
    page = (sa.select(T.c.trial_id, T.c.number, T.c.state, T.c.datetime_start,
                      T.c.datetime_complete)
            .where(T.c.study_id == optuna_id).order_by(T.c.number).limit(limit).offset(offset)
            .subquery())  # the page first (index on study and number), then its rows' values
    rows = conn.execute(
        sa.select(page, v.c.value, v.c.value_type, reason.c.value_json.label("reason"),
                  retry.c.value_json.label("retry_of"), rung.c.value_json.label("horizon"))
        .select_from(
            page.outerjoin(v, sa.and_(v.c.trial_id == page.c.trial_id, v.c.objective == 0))
            .outerjoin(reason, sa.and_(reason.c.trial_id == page.c.trial_id,
                                       reason.c.key == names.ATTR_REASON))
            .outerjoin(retry, sa.and_(retry.c.trial_id == page.c.trial_id,
                                      retry.c.key == "retry_of"))
            .outerjoin(rung, sa.and_(rung.c.trial_id == page.c.trial_id,
                                     rung.c.key == names.ATTR_HORIZON)))
        .order_by(page.c.number)).all()
    done = {int(r.trial_id) for r in rows if r.state.is_finished()}  # their params are final
    params = kept.get(conn, sorted(done)) | params_of(
        conn, [int(r.trial_id) for r in rows if int(r.trial_id) not in done])
    return [TrialRow(int(r.trial_id), int(r.number), r.state.name, params[r.trial_id],
                     None if r.value_type is None else
                     stats.shown_value(r.value, r.value_type.name),
                     None if r.reason is None else json.loads(r.reason),
                     None if r.retry_of is None else json.loads(r.retry_of),
                     r.datetime_start, r.datetime_complete,
                     None if r.horizon is None else json.loads(r.horizon))
            for r in rows]


def optuna_id_and_total(conn: sa.Connection, name: str) -> tuple[int, int] | None:
    """The named study's Optuna id and how many trials it has; None when it has none."""
    s, counts = internals.STUDIES, trial_counts
    row = conn.execute(sa.select(s.c.study_id, sa.func.coalesce(sa.func.sum(counts.c.n), 0))
                       .select_from(s.outerjoin(counts,
                                                counts.c.optuna_study_id == s.c.study_id))
                       .where(s.c.study_name == name).group_by(s.c.study_id)).first()
    return None if row is None else (int(row[0]), int(row[1]))
