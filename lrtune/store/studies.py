"""Studies: lrtune's row (spec, status, owner) and Optuna's study, created and deleted
together in one transaction."""

from __future__ import annotations

import contextlib
import json
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, get_args

import optuna
import sqlalchemy as sa
from optuna.study import StudyDirection

from lrtune import optuna_internals as internals
from lrtune import study as names
from lrtune.errors import Conflict, NotFound, OverQuota
from lrtune.history import with_history
from lrtune.lr_range import LrBounds, resolved
from lrtune.spec import StudySpec
from lrtune.store import reads, warm
from lrtune.store.db import Database, autocommit, aware, now, utc
from lrtune.tables import lease_trials, leases, principals, studies
from lrtune.tasks import EXTERNAL

Status = Literal["running", "cancelled", "done", "failed"]
RUNNING, CANCELLED, DONE, FAILED = "running", "cancelled", "done", "failed"
STATUSES: tuple[Status, ...] = get_args(Status)


NO_RESULT = ("no trial completed: every trial diverged or was pruned. Try a lower or "
             "narrower base-LR range (space.lr, or \"auto\" for an LR range test), other "
             "optimizers, or pruner \"none\"")


def ended(counts: dict[str, int]) -> tuple[str, str | None]:
    """How a study whose budget is spent ends: ``done``, or ``failed`` with the reason and
    what to change when not one trial completed (nothing to hand back)."""
    if counts.get("COMPLETE", 0) == 0:
        return FAILED, NO_RESULT
    return DONE, None


@dataclass(frozen=True)
class Quota:
    """What one principal may hold at once."""

    running_studies: int
    queued_trials: int  # the budgets (n_trials) of its running studies, summed


SPECS = 4096  # parsed specs kept
Identity = tuple[int, datetime]  # a study's id and creation time: unique across databases
_specs: dict[Identity, StudySpec] = {}  # the oldest first out
_specs_lock = threading.Lock()


def parsed_spec(study: Identity, raw: dict[str, Any]) -> StudySpec:
    """A study's stored spec, parsed once per process (a spec never changes; a study is
    known by its id and creation time, as a process may read several databases), shared by
    the records read since: treat it as read-only."""
    spec = _specs.get(study)
    if spec is None:
        spec = StudySpec.model_validate(raw)
        with _specs_lock:
            _specs[study] = spec
            while len(_specs) > SPECS:
                del _specs[next(iter(_specs))]
    return spec


@dataclass(frozen=True)
class StudyRecord:
    id: int
    name: str
    task: str
    spec: StudySpec
    status: str
    owner: str
    n_trials: int
    reason: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    lr_range: dict[str, Any] | None = None  # the LR range test's result, for lr "auto"

    @classmethod
    def from_row(cls, row: sa.Row[Any] | sa.RowMapping, spec: StudySpec | None = None
                 ) -> StudyRecord:
        """A record from a row of ``lrtune_studies``; ``spec``, parsed already, where the
        row was read without its spec."""
        m = row if isinstance(row, sa.RowMapping) else row._mapping
        created, updated = utc(m["created_at"]), utc(m["updated_at"])
        return cls(m["id"], m["name"], m["task"],
                   spec or parsed_spec((m["id"], created), m["spec"]),
                   m["status"], m["owner"], m["n_trials"], m["reason"], created, updated,
                   aware(m["finished_at"]), m["lr_range"])

    @property
    def lr_bounds(self) -> LrBounds | None:
        return LrBounds.from_dict(self.lr_range) if self.lr_range else None

    @property
    def search_spec(self) -> StudySpec:
        """The spec trials sample from: ``space.lr: "auto"`` replaced by its range test."""
        return resolved(self.spec, self.lr_bounds)


def page(conn: sa.Connection, status: str | None, limit: int, offset: int,
         kept: reads.FinishedParams) -> tuple[list[tuple[StudyRecord, reads.Summary]], int]:
    """Studies ``offset`` to ``offset + limit`` by id with their summaries, and how many
    there are: one query (the total counted beside the page; a second past the end), and
    one for specs this process has not parsed yet (the page is read without them)."""
    where = [studies.c.status == status] if status is not None else []
    columns = [c for c in studies.c if c.name != "spec"]
    rows = conn.execute(reads.summarised(
        sa.select(*columns, sa.func.count().over().label("total")).where(*where)
        .order_by(studies.c.id).limit(limit).offset(offset).subquery())).all()
    if rows:
        total = rows[0].total
    else:
        total = conn.execute(sa.select(sa.func.count()).select_from(studies).where(*where)
                             ).scalar_one()
    summaries = reads.collect(conn, rows, kept)
    known = {i: (i, utc(m["created_at"])) for i, (m, _) in summaries.items()}
    specs = {i: spec for i, key in known.items() if (spec := _specs.get(key)) is not None}
    unparsed = [i for i in summaries if i not in specs]
    if unparsed:
        for study_id, raw in conn.execute(sa.select(studies.c.id, studies.c.spec).where(
                studies.c.id.in_(unparsed))):
            specs[study_id] = parsed_spec(known[study_id], raw)
    return [(StudyRecord.from_row(m, specs[i]), summary)
            for i, (m, summary) in summaries.items()], int(total)


class Studies:
    def __init__(self, db: Database, storage: optuna.storages.RDBStorage) -> None:
        self.db, self.storage = db, storage
        self._optuna: dict[int, optuna.Study] = {}
        self._lock = threading.Lock()

    def create(self, spec: StudySpec, owner: str, quota: Quota | None = None) -> StudyRecord:
        """lrtune's row and Optuna's study (direction, spec and objective name as
        attributes) in one transaction: a failure leaves neither. With ``quota``, the
        owner's running studies must stay within it (OverQuota)."""
        stamp = now()
        try:
            with self.db.transaction() as conn:
                if quota is not None:
                    self._check_quota(conn, owner, spec, quota)
                if conn.execute(sa.select(studies.c.id).where(studies.c.name == spec.name)
                                ).first():
                    raise Conflict(f"a study named {spec.name!r} exists")
                if conn.execute(sa.select(internals.STUDIES.c.study_id).where(
                        internals.STUDIES.c.study_name == spec.name)).first():
                    raise Conflict(f"an Optuna study named {spec.name!r} exists")
                optuna_id = self._insert_optuna_study(conn, spec)
                warm.queue(conn, optuna_id, warm.warm_configs(conn, spec))
                sid = conn.execute(studies.insert().values(
                    name=spec.name, task=spec.task, spec=spec.model_dump(mode="json"),
                    status=RUNNING, owner=owner, n_trials=spec.n_trials, created_at=stamp,
                    updated_at=stamp).returning(studies.c.id)).scalar_one()
        except sa.exc.IntegrityError:  # created at the same moment by another request
            raise Conflict(f"a study named {spec.name!r} exists") from None
        return self.get(int(sid))

    @staticmethod
    def _check_quota(conn: sa.Connection, owner: str, spec: StudySpec, quota: Quota) -> None:
        conn.execute(sa.select(principals.c.id).where(principals.c.public_id == owner)
                     .with_for_update())  # one create per principal at a time (PostgreSQL)
        running, budget = conn.execute(
            sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(studies.c.n_trials), 0))
            .where(studies.c.owner == owner, studies.c.status == RUNNING)).one()
        if running >= quota.running_studies:
            raise OverQuota(f"{running} running studies: the limit per principal is "
                            f"{quota.running_studies}; cancel or wait for one", "name")
        if budget + spec.n_trials > quota.queued_trials:
            raise OverQuota(f"n_trials: {budget} trials are budgeted in your running studies; "
                            f"{spec.n_trials} more would pass the limit of "
                            f"{quota.queued_trials}", "n_trials")

    @staticmethod
    def _insert_optuna_study(conn: sa.Connection, spec: StudySpec) -> int:
        """The rows ``optuna.create_study`` and ``Study.set_user_attr`` /
        ``set_metric_names`` would write, in the caller's transaction."""
        optuna_id = int(conn.execute(internals.STUDIES.insert().values(
            study_name=spec.name).returning(internals.STUDIES.c.study_id)).scalar_one())
        direction = (StudyDirection.MINIMIZE if names.direction(spec) == "minimize"
                     else StudyDirection.MAXIMIZE)
        conn.execute(internals.STUDY_DIRECTIONS.insert().values(
            study_id=optuna_id, objective=0, direction=direction))
        conn.execute(internals.STUDY_USER_ATTRS.insert().values(
            study_id=optuna_id, key=names.STUDY_ATTR_SPEC,
            value_json=json.dumps(spec.model_dump(mode="json"))))
        conn.execute(internals.STUDY_SYSTEM_ATTRS.insert().values(
            study_id=optuna_id, key=internals.METRIC_NAMES_ATTR,
            value_json=json.dumps([spec.objective])))
        return optuna_id

    def get(self, study_id: int) -> StudyRecord:
        with self.db.read() as conn:
            row = conn.execute(sa.select(studies).where(studies.c.id == study_id)).first()
        if row is None:
            raise NotFound(f"no study {study_id}")
        return StudyRecord.from_row(row)

    def page(self, status: str | None = None, limit: int = 50, offset: int = 0
             ) -> tuple[list[StudyRecord], int]:
        """Studies ``offset`` to ``offset + limit`` by id, and how many there are."""
        where = [studies.c.status == status] if status is not None else []
        with self.db.transaction() as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(studies).where(*where)
                                 ).scalar_one()
            rows = conn.execute(sa.select(studies).where(*where).order_by(studies.c.id)
                                .limit(limit).offset(offset)).all()
        return [StudyRecord.from_row(r) for r in rows], int(total)

    def by_status(self) -> dict[str, int]:
        """How many studies have each status, one grouped query."""
        with self.db.transaction() as conn:
            found = {status: n for status, n in conn.execute(
                sa.select(studies.c.status, sa.func.count()).group_by(studies.c.status))}
        return {status: int(found.get(status, 0)) for status in STATUSES}

    def running_ids(self, external: bool | None = False, owner: str | None = None
                    ) -> list[int]:
        """Running studies by id: lrtune's own tasks (``external=False``, what its workers
        train), external ones only (True) or both (None); of ``owner`` alone if given."""
        query = sa.select(studies.c.id).where(studies.c.status == RUNNING)
        if external is not None:
            query = query.where((studies.c.task == EXTERNAL) if external
                                else (studies.c.task != EXTERNAL))
        if owner is not None:
            query = query.where(studies.c.owner == owner)
        with self.db.transaction() as conn:
            return [int(r[0]) for r in conn.execute(query.order_by(studies.c.id))]

    def set_status(self, study_id: int, status: str, reason: str | None = None,
                   only_from: str | None = RUNNING, conn: sa.Connection | None = None) -> bool:
        """Change a study's status; ``conn`` is the claim's connection when it holds the row."""
        stamp = now()
        query = studies.update().where(studies.c.id == study_id)
        if only_from is not None:
            query = query.where(studies.c.status == only_from)
        values: dict[str, Any] = {"status": status, "updated_at": stamp, "reason": reason}
        if status != RUNNING:
            values["finished_at"] = stamp
        if conn is not None:
            return bool(conn.execute(query.values(**values)).rowcount)
        with self.db.transaction() as own:
            return bool(own.execute(query.values(**values)).rowcount)

    def cancel(self, study_id: int) -> StudyRecord:
        self.get(study_id)
        self.set_status(study_id, CANCELLED, "cancelled by its owner")
        return self.get(study_id)

    def delete(self, study_id: int) -> None:
        """lrtune's row and Optuna's study with all its trials, in one transaction."""
        record = self.get(study_id)
        trials = internals.TRIALS
        with self.db.transaction() as conn:
            conn.execute(studies.delete().where(studies.c.id == study_id))
            of_leases = sa.select(leases.c.id).where(leases.c.study_id == study_id)
            conn.execute(lease_trials.delete().where(lease_trials.c.lease_id.in_(of_leases)))
            conn.execute(leases.delete().where(leases.c.study_id == study_id))
            # Locked first, the study and then its trials: a worker cannot add a trial, or a
            # row to a trial, between the deletes below (it waits, then finds them gone).
            optuna_id = conn.execute(sa.select(internals.STUDIES.c.study_id).where(
                internals.STUDIES.c.study_name == record.name).with_for_update()).scalar()
            if optuna_id is not None:
                of_study = sa.select(trials.c.trial_id).where(trials.c.study_id == optuna_id)
                conn.execute(of_study.with_for_update()).all()
                for table in internals.TRIAL_TABLES:
                    conn.execute(table.delete().where(table.c.trial_id.in_(of_study)))
                conn.execute(trials.delete().where(trials.c.study_id == optuna_id))
                for table in internals.STUDY_TABLES:
                    conn.execute(table.delete().where(table.c.study_id == optuna_id))
                conn.execute(internals.STUDIES.delete().where(
                    internals.STUDIES.c.study_id == optuna_id))
        self.forget(study_id)

    def forget(self, study_id: int) -> None:
        with self._lock:
            self._optuna.pop(study_id, None)

    def save_lr_bounds(self, study_id: int, bounds: LrBounds) -> StudyRecord:
        """Keep the first range test saved for a study (workers may race); return the record."""
        with self.db.transaction() as conn:
            conn.execute(studies.update().where(studies.c.id == study_id,
                                                studies.c.lr_range.is_(None))
                         .values(lr_range=bounds.to_dict(), updated_at=now()))
        record = self.get(study_id)
        if record.lr_bounds is not None:  # shown in the dashboard beside the spec
            self.storage.set_study_user_attr(
                self.optuna_id(record), names.STUDY_ATTR_LR_RANGE, record.lr_bounds.summary())
        return record

    def _optuna_read(self) -> contextlib.AbstractContextManager[sa.Connection]:
        """An autocommit connection of Optuna's engine: a claimer asks for the study's Optuna
        id or history while it holds one of lrtune's connections (the claim lock), and two
        from one pool at once could wait on each other for good when the pool is small."""
        return autocommit(self.storage.engine)

    def optuna_id(self, record: StudyRecord) -> int:
        """The id of the record's Optuna study, looked up by its name (an id alone may have
        been given to another study since: SQLite reuses the ids of deleted studies);
        NotFound when there is none."""
        with self._optuna_read() as conn:  # one statement; Optuna's ORM takes a transaction
            found = conn.execute(sa.select(internals.STUDIES.c.study_id).where(
                internals.STUDIES.c.study_name == record.name)).scalar()
        if found is None:
            raise NotFound(f"study {record.id} ({record.name}) has no Optuna study any more")
        return int(found)

    @staticmethod
    def check_optuna_study(conn: sa.Connection, record: StudyRecord, optuna_id: int) -> None:
        """NotFound unless the record's Optuna study still has this id (a cached one may
        have been deleted by other means than lrtune, and its id given to another)."""
        name = conn.execute(sa.select(internals.STUDIES.c.study_name).where(
            internals.STUDIES.c.study_id == optuna_id)).scalar()
        if name != record.name:
            raise NotFound(f"study {record.id} ({record.name}) has no Optuna study any more")

    def optuna_study(self, record: StudyRecord) -> optuna.Study:
        """The study's Optuna ``Study`` with its sampler and pruner, kept per study id;
        NotFound when its Optuna study is gone."""
        cached = self._optuna.get(record.id)
        if cached is None:
            spec = record.spec
            try:
                name = self.storage.get_study_name_from_id(self.optuna_id(record))
            except KeyError:
                raise NotFound(f"study {record.id} ({record.name}) has no Optuna study "
                               "any more") from None
            sampler = names.make_sampler(spec.sampler)
            if spec.warm_start is not None:
                with self._optuna_read() as conn:
                    sampler = with_history(sampler, warm.history(conn, spec))
            cached = optuna.load_study(study_name=name, storage=self.storage, sampler=sampler,
                                       pruner=names.make_pruner(spec.pruner, spec.epochs))
            self._optuna[record.id] = cached
        return cached
