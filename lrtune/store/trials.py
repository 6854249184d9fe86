"""Trial records in Optuna's tables, many rows per statement: counts, heartbeats, new trials,
bulk rows, and ``end_trials``, the one way a claimed trial ends (single trials and packs)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa
from optuna.trial import TrialState
from sqlalchemy.dialects import postgresql, sqlite

from lrtune import optuna_internals as internals
from lrtune.attrs import ATTR_HORIZON
from lrtune.dashboard import curve_artifact_attr
from lrtune.horizon import Run, Rung
from lrtune.store import stats

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger("lrtune.store")
TAKEN = (TrialState.RUNNING, TrialState.WAITING, TrialState.COMPLETE, TrialState.PRUNED)
ID_BATCH = 500  # trial ids per IN list (SQLite builds before 3.32 allow 999 parameters)
T = internals.TRIALS


def optuna_now() -> datetime:
    """Optuna stores naive UTC."""
    return datetime.now(UTC).replace(tzinfo=None)


def ids_in(column: sa.ColumnElement[int], ids: Iterable[int]) -> sa.ColumnElement[bool]:
    """``column IN (ids)`` with the ids written into the statement, not bound: psycopg parses
    a statement of over 50 parameters anew on every execution (a pack's ids made one), and an
    integer needs no binding."""
    return column.in_(sa.bindparam("ids", [int(i) for i in ids], expanding=True,
                                   literal_execute=True, unique=True, type_=sa.Integer))


def counts(conn: sa.Connection, optuna_study_id: int) -> dict[str, int]:
    """Trials per state, one grouped query."""
    result = {s.name: 0 for s in TrialState}
    for state, n in conn.execute(sa.select(T.c.state, sa.func.count()).where(
            T.c.study_id == optuna_study_id).group_by(T.c.state)):
        result[TrialState(state).name] = int(n)
    return result


def requeued(conn: sa.Connection, optuna_study_id: int) -> int:
    """Failed trials that were re-queued (each copy names its original: ``retry_of``)."""
    attrs = internals.USER_ATTRS
    return int(conn.execute(sa.select(sa.func.count()).select_from(
        attrs.join(T, attrs.c.trial_id == T.c.trial_id)).where(
        T.c.study_id == optuna_study_id, attrs.c.key == "retry_of")).scalar_one())


def record_heartbeats(conn: sa.Connection, trial_ids: Sequence[int]) -> None:
    """Optuna's heartbeat rows of these trials set to the database's now (the reaper compares
    them with the database's clock too)."""
    beats = internals.HEARTBEATS
    for start in range(0, len(trial_ids), ID_BATCH):
        chunk = list(trial_ids[start:start + ID_BATCH])
        beaten = set(conn.execute(
            beats.update().where(ids_in(beats.c.trial_id, chunk))
            .values(heartbeat=sa.func.now()).returning(beats.c.trial_id)).scalars())
        first = [trial_id for trial_id in chunk if trial_id not in beaten]
        if first:
            conn.execute(beats.insert().from_select(
                ["trial_id", "heartbeat"], sa.select(T.c.trial_id, sa.func.now())
                .where(ids_in(T.c.trial_id, first))))


def stale(conn: sa.Connection, optuna_study_id: int, grace: float) -> list[int]:
    """RUNNING trials whose last heartbeat is older than ``grace`` seconds by the database's
    clock, and those that never beat (worker killed right after claiming) started before."""
    beats = internals.HEARTBEATS
    db_now = conn.execute(sa.select(sa.func.now())).scalar_one()
    if isinstance(db_now, str):  # SQLite's CURRENT_TIMESTAMP
        db_now = datetime.fromisoformat(db_now)
    beat_cutoff = db_now.replace(tzinfo=None) - timedelta(seconds=grace)
    start_cutoff = optuna_now() - timedelta(seconds=grace)
    query = sa.select(T.c.trial_id).select_from(
        T.outerjoin(beats, beats.c.trial_id == T.c.trial_id)).where(
        T.c.study_id == optuna_study_id, T.c.state == TrialState.RUNNING,
        sa.or_(beats.c.heartbeat < beat_cutoff,
               sa.and_(beats.c.trial_id.is_(None), T.c.datetime_start < start_cutoff)))
    return [int(r[0]) for r in conn.execute(query)]


COPY_FROM = 8  # rows from which a COPY beats INSERTs (a COPY costs more round trips)
UPSERT: dict[str, Any] = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


def bulk_insert(conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """PostgreSQL through psycopg 3, ``COPY_FROM`` rows or more: one COPY in the
    connection's transaction (an executemany, even pipelined, makes the server run one INSERT
    per row); else one executemany (a compiled multi-VALUES statement of thousands of
    parameters costs more to build than it saves)."""
    if not rows:
        return
    if (conn.dialect.name, conn.dialect.driver) != ("postgresql", "psycopg") or \
            len(rows) < COPY_FROM:
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


def replace_attrs(conn: sa.Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Set these trial user attributes (``trial_id``, ``key``, ``value_json``), replacing any
    value they had."""
    attrs = internals.USER_ATTRS
    if 0 < len(rows) < COPY_FROM and conn.dialect.name in UPSERT:
        upsert: Any = UPSERT[conn.dialect.name](attrs)  # either dialect's upserting insert
        conn.execute(upsert.on_conflict_do_update(  # Optuna's unique (trial_id, key)
            index_elements=[attrs.c.trial_id, attrs.c.key],
            set_={"value_json": upsert.excluded.value_json}), list(rows))
        return
    for key in {r["key"] for r in rows}:
        conn.execute(attrs.delete().where(attrs.c.key == key, ids_in(
            attrs.c.trial_id, [r["trial_id"] for r in rows if r["key"] == key])))
    bulk_insert(conn, attrs, list(rows))


def running_locked(conn: sa.Connection, trial_ids: Sequence[int]) -> dict[int, int]:
    """Which of these trials are RUNNING, their rows locked until the transaction ends (on
    PostgreSQL a row lock, on SQLite the database's write lock): an ending or a reap waits.
    By trial id, the epochs each has reported (its intermediate values), in the same
    statement."""
    iv = internals.INTERMEDIATE
    lock = T.update().where(ids_in(T.c.trial_id, trial_ids),
                            T.c.state == TrialState.RUNNING) \
        .values(datetime_start=T.c.datetime_start)
    if conn.dialect.name == "postgresql":
        reported = sa.select(sa.func.count()).where(iv.c.trial_id == T.c.trial_id) \
            .scalar_subquery()
        return {int(t): int(n) for t, n in conn.execute(lock.returning(T.c.trial_id, reported))}
    # SQLite's RETURNING names columns unqualified: a correlated count would count itself
    running = [int(t) for t in conn.execute(lock.returning(T.c.trial_id)).scalars()]
    counts = {int(t): int(n) for t, n in conn.execute(sa.select(
        iv.c.trial_id, sa.func.count()).where(ids_in(iv.c.trial_id, running))
        .group_by(iv.c.trial_id))}
    return {t: counts.get(t, 0) for t in running}


def insert_trials(conn: sa.Connection, optuna_study_id: int, k: int) -> list[tuple[int, int]]:
    """Insert ``k`` RUNNING trials; their (trial_id, number) pairs, numbers in order."""
    conn.execute(sa.select(internals.STUDIES.c.study_id).where(
        internals.STUDIES.c.study_id == optuna_study_id)
        .with_for_update())  # Optuna numbers trials under this lock too
    base = conn.execute(sa.select(sa.func.count()).select_from(T)
                        .where(T.c.study_id == optuna_study_id)).scalar_one()
    start = optuna_now()
    rows = [{"number": base + i, "study_id": optuna_study_id, "state": TrialState.RUNNING,
             "datetime_start": start} for i in range(k)]
    result = conn.execute(T.insert().returning(T.c.trial_id, T.c.number,
                                               sort_by_parameter_order=True), rows)
    return [(int(tid), int(number)) for tid, number in result]


@dataclass
class Ending:
    """How one claimed trial ended. ``notes``: system attributes to store with it (e.g. a
    pruner's rungs)."""

    trial_id: int
    number: int
    state: TrialState
    value: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)


def end_trials(conn: sa.Connection, optuna_study_id: int, endings: Sequence[Ending],
               study_name: str) -> list[Ending]:
    """End RUNNING trials as Optuna's ``tell`` would: the state and completion time; a
    COMPLETE trial's value; a PRUNED trial's value is its last reported value (unless NaN);
    plus the curve artifact of a COMPLETE or PRUNED trial. A trial no longer RUNNING (reaped
    as lost meanwhile: its re-queued copy runs instead) is left as it is and logged. Returns
    the endings applied."""
    stamp = optuna_now()
    applied: list[Ending] = []
    for state in {e.state for e in endings}:
        group = {e.trial_id: e for e in endings if e.state == state}
        done = set(conn.execute(T.update().where(
            ids_in(T.c.trial_id, group), T.c.state == TrialState.RUNNING)
            .values(state=state, datetime_complete=stamp).returning(T.c.trial_id)).scalars())
        for trial_id, ending in group.items():
            if trial_id in done:
                applied.append(ending)
            else:
                log.warning("study %s trial %d was no longer running (reaped as lost); "
                            "its ending is dropped", study_name, ending.number)
    last = last_reported(conn, [e.trial_id for e in applied if e.state == TrialState.PRUNED])
    values, system = [], []
    for ending in applied:
        value = ending.value if ending.state == TrialState.COMPLETE else \
            last.get(ending.trial_id) if ending.state == TrialState.PRUNED else None
        if value is not None and not math.isnan(value):
            stored, kind = internals.stored_value(value)
            values.append({"trial_id": ending.trial_id, "objective": 0, "value": stored,
                           "value_type": kind})
        notes = dict(ending.notes)
        if ending.state in (TrialState.COMPLETE, TrialState.PRUNED):
            key, meta = curve_artifact_attr(optuna_study_id, ending.trial_id, ending.number)
            notes[key] = meta  # Optuna keeps artifact meta as a JSON string
        system += [{"trial_id": ending.trial_id, "key": key, "value_json": json.dumps(note)}
                   for key, note in notes.items()]
    bulk_insert(conn, internals.VALUES, values)
    bulk_insert(conn, internals.SYSTEM_ATTRS, system)
    return applied


def last_reported(conn: sa.Connection, trial_ids: list[int]) -> dict[int, float]:
    """Each trial's value at its last reported step."""
    iv = internals.INTERMEDIATE
    last: dict[int, float] = {}
    for start in range(0, len(trial_ids), ID_BATCH):
        chunk = trial_ids[start:start + ID_BATCH]
        latest = sa.select(iv.c.trial_id, sa.func.max(iv.c.step).label("step")).where(
            ids_in(iv.c.trial_id, chunk)).group_by(iv.c.trial_id).subquery()
        for trial_id, stored, kind in conn.execute(
                sa.select(iv.c.trial_id, iv.c.intermediate_value, iv.c.intermediate_value_type)
                .join(latest, sa.and_(iv.c.trial_id == latest.c.trial_id,
                                      iv.c.step == latest.c.step))):
            last[int(trial_id)] = internals.intermediate_from_stored(stored, kind)
    return last


def ladder_runs(conn: sa.Connection, optuna_study_id: int) -> list[Run]:
    """The horizon ladder's runs of a study in one statement: number, rung, whether ended and
    the value (a PRUNED run's is its last report), ``ref`` the trial id. Not Optuna's whole
    trials: a claim pays for what the ladder reads, not for every parameter and report."""
    attrs, values = internals.USER_ATTRS, internals.VALUES
    rows = conn.execute(
        sa.select(T.c.trial_id, T.c.number, T.c.state, attrs.c.value_json, values.c.value,
                  values.c.value_type)
        .join(attrs, sa.and_(attrs.c.trial_id == T.c.trial_id, attrs.c.key == ATTR_HORIZON))
        .outerjoin(values, sa.and_(values.c.trial_id == T.c.trial_id, values.c.objective == 0))
        .where(T.c.study_id == optuna_study_id))
    runs = []
    for trial_id, number, state, rung_json, value, kind in rows:
        rung = Rung.from_attr(json.loads(rung_json))
        if rung is None:
            continue
        score = None if kind is None else stats.shown_value(value, kind.name)
        runs.append(Run(int(number), rung, state in (TrialState.COMPLETE, TrialState.PRUNED),
                        score, int(trial_id)))
    return runs
