"""A pack's trials created in one statement and sampled in memory, parameters written in one.

Optuna's own path costs a transaction per trial created and one per parameter suggested; for a
pack of K trials that is K × (1 + parameters) round trips before any training. Here the K trial
rows are inserted at once (numbers counted under the study's row lock, as Optuna does), and the
trials sample through ``PackStorage``, a view of the study's storage that keeps their
parameters (and the sampler's notes on them) in memory, visible to the sampler, so a constant
liar sees the pack's own trials, until ``write_params`` inserts them in the ledger's
transaction. While the pack samples, the rest of the study is read once: TPE with a constant
liar reads every trial once per parameter group of every trial sampled, and the storage's
cache re-reads unfinished trials, the pack's own included, each time (two minutes for a pack
of 256). Everything else is the study's storage.
"""

from __future__ import annotations

import copy
import json
import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import optuna
import sqlalchemy as sa
from optuna.distributions import BaseDistribution, distribution_to_json
from optuna.storages._rdb import models
from optuna.study.study import _ThreadLocalStudyAttribute
from optuna.trial import FrozenTrial, TrialState

if TYPE_CHECKING:
    import psycopg

TRIALS = models.TrialModel.__table__
PARAMS = models.TrialParamModel.__table__
SYSTEM_ATTRS = models.TrialSystemAttributeModel.__table__
STUDIES = models.StudyModel.__table__


def bulk_insert(conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """PostgreSQL through psycopg 3: one COPY in the connection's transaction (an
    executemany, even pipelined, makes the server run one INSERT per row); elsewhere one
    executemany (a compiled multi-VALUES statement of thousands of parameters costs more to
    build than it saves)."""
    if not rows:
        return
    if (conn.dialect.name, conn.dialect.driver) != ("postgresql", "psycopg"):
        conn.execute(table.insert(), rows)
        return
    columns = list(rows[0])
    convert = [table.c[name].type.bind_processor(conn.dialect) for name in columns]
    quote = conn.dialect.identifier_preparer.quote
    statement = f"COPY {quote(table.name)} ({', '.join(map(quote, columns))}) FROM STDIN"
    raw = cast("psycopg.Connection[Any]", conn.connection.dbapi_connection)
    with raw.cursor() as cursor, cursor.copy(statement) as copy:
        for row in rows:
            copy.write_row([row[name] if to is None else to(row[name])
                            for name, to in zip(columns, convert, strict=True)])


def insert_trials(conn: sa.Connection, study_id: int, k: int) -> list[tuple[int, int]]:
    """Insert ``k`` RUNNING trials; their (trial_id, number) pairs, numbers in order."""
    conn.execute(sa.select(STUDIES.c.study_id).where(STUDIES.c.study_id == study_id)
                 .with_for_update())  # Optuna numbers trials under this lock too
    base = conn.execute(sa.select(sa.func.count()).select_from(TRIALS)
                        .where(TRIALS.c.study_id == study_id)).scalar_one()
    start = datetime.now(UTC).replace(tzinfo=None)  # Optuna stores naive UTC
    rows = [{"number": base + i, "study_id": study_id, "state": TrialState.RUNNING,
             "datetime_start": start} for i in range(k)]
    result = conn.execute(TRIALS.insert().returning(TRIALS.c.trial_id, TRIALS.c.number,
                                                    sort_by_parameter_order=True), rows)
    return [(int(tid), int(number)) for tid, number in result]


class PackStorage:
    """The study's storage, with the pack's trials and their parameters held in memory."""

    def __init__(self, inner: Any, study_id: int, created: list[tuple[int, int]]) -> None:
        self.inner = inner
        start = datetime.now()
        self.local: dict[int, FrozenTrial] = {
            tid: FrozenTrial(number=number, trial_id=tid, state=TrialState.RUNNING, value=None,
                             values=None, datetime_start=start, datetime_complete=None,
                             params={}, distributions={}, user_attrs={}, system_attrs={},
                             intermediate_values={})
            for tid, number in created}
        self.study_id = study_id
        self.pending: list[dict[str, Any]] = []
        self.pending_notes: dict[tuple[int, str], dict[str, Any]] = {}  # a key set again: last
        self._study_view: list[FrozenTrial] | None = None  # while sampling: read once
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        local = self.local.get(trial_id)
        return copy.deepcopy(local) if local is not None else self.inner.get_trial(trial_id)

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Any = None) -> list[FrozenTrial]:
        if study_id != self.study_id:
            return self.inner.get_all_trials(  # type: ignore[no-any-return]
                study_id, deepcopy=deepcopy, states=states)
        with self._lock:
            if self._study_view is None:
                self._study_view = [self.local.get(t._trial_id, t) for t in
                                    self.inner.get_all_trials(study_id, deepcopy=False)]
            trials = [t for t in self._study_view if states is None or t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                        distribution: BaseDistribution) -> None:
        local = self.local.get(trial_id)
        if local is None:
            self.inner.set_trial_param(trial_id, param_name, param_value_internal, distribution)
            return
        with self._lock:
            local.params[param_name] = distribution.to_external_repr(param_value_internal)
            local.distributions[param_name] = distribution
            self.pending.append({"trial_id": trial_id, "param_name": param_name,
                                 "param_value": param_value_internal,
                                 "distribution_json": distribution_to_json(distribution)})

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        local = self.local.get(trial_id)
        if local is None:
            self.inner.set_trial_system_attr(trial_id, key, value)
            return
        with self._lock:  # e.g. TPE's constant liar sharing a trial's relative params
            local.system_attrs[key] = value
            self.pending_notes[trial_id, key] = {"trial_id": trial_id, "key": key,
                                                 "value_json": json.dumps(value)}

    @property
    def dirty(self) -> bool:
        return bool(self.pending or self.pending_notes)

    def write_params(self, conn: sa.Connection) -> None:
        """Insert what was sampled since the last call (in the caller's transaction); the
        study is read afresh from then on."""
        with self._lock:
            pending, self.pending = self.pending, []
            notes, self.pending_notes = list(self.pending_notes.values()), {}
            self._study_view = None
        bulk_insert(conn, PARAMS, pending)
        bulk_insert(conn, SYSTEM_ATTRS, notes)


def pack_study(study: optuna.Study, storage: PackStorage) -> optuna.Study:
    """``study`` (same sampler, pruner, ids) reading and writing through ``storage``."""
    view = copy.copy(study)
    view._storage = storage  # type: ignore[assignment]
    view._thread_local = _ThreadLocalStudyAttribute()  # its own trial cache
    return view
