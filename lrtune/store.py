"""The one database interface of service and workers: lrtune's tables and Optuna's storage.

Budget rule: a study never holds more than ``n_trials`` trials in RUNNING, WAITING, COMPLETE
or PRUNED. Claims serialise per study: ``SELECT … FOR UPDATE SKIP LOCKED`` on the study's row
in PostgreSQL; in SQLite a file lock beside the database (Optuna writes through its own
connection, so a write transaction held across ``ask()`` would deadlock SQLite).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import secrets
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.distributions import distribution_to_json
from optuna.storages._rdb import models
from optuna.trial import TrialState
from sqlalchemy.engine import Engine

from lrtune import study as names
from lrtune.dashboard import (
    name_objective,
    note_is_stale,
    update_best_note,
)
from lrtune.lr_range import LrBounds, resolved
from lrtune.pack_storage import PackStorage, insert_trials, pack_study
from lrtune.settings import Settings
from lrtune.spec import StudySpec
from lrtune.tables import studies, tokens

log = logging.getLogger("lrtune.store")

OPTUNA_TABLES = {name: model.__table__ for name, model in {
    "trials": models.TrialModel, "values": models.TrialValueModel,
    "params": models.TrialParamModel, "intermediate": models.TrialIntermediateValueModel,
    "user_attrs": models.TrialUserAttributeModel,
    "system_attrs": models.TrialSystemAttributeModel}.items()}
HEARTBEATS = models.TrialHeartbeatModel.__table__
ID_BATCH = 500  # trial ids per IN list (SQLite builds before 3.32 allow 999 parameters)

TAKEN = (TrialState.RUNNING, TrialState.WAITING, TrialState.COMPLETE, TrialState.PRUNED)
RUNNING, CANCELLED, DONE, FAILED = "running", "cancelled", "done", "failed"
STATUSES = (RUNNING, CANCELLED, DONE, FAILED)
_MIGRATE_LOCK = threading.Lock()  # Alembic's command API keeps module globals


class NotFound(LookupError):
    pass


class Conflict(ValueError):
    pass


def now() -> datetime:
    return datetime.now(UTC)


def aware(moment: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; lrtune writes UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


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
    def from_row(cls, row: Any) -> StudyRecord:
        m = row._mapping
        return cls(m["id"], m["name"], m["task"], StudySpec.model_validate(m["spec"]),
                   m["status"], m["owner"], m["n_trials"], m["reason"], aware(m["created_at"]),
                   aware(m["updated_at"]), aware(m["finished_at"]), m["lr_range"])

    @property
    def lr_bounds(self) -> LrBounds | None:
        return LrBounds.from_dict(self.lr_range) if self.lr_range else None

    @property
    def search_spec(self) -> StudySpec:
        """The spec trials sample from: ``space.lr: "auto"`` replaced by its range test."""
        return resolved(self.spec, self.lr_bounds)


@dataclass
class Claim:
    record: StudyRecord
    study: optuna.Study
    trial: optuna.Trial
    last_slot: bool = True  # the budget was fully taken with this claim
    params: PackStorage | None = None  # holds the trial's sampled params until written


def engine_for(url: str) -> Engine:
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 60})

        @sa.event.listens_for(engine, "connect")
        def _wal(dbapi_conn: Any, _: Any) -> None:
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute("PRAGMA busy_timeout=60000")

        return engine
    return sa.create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)


def optuna_url(url: str) -> str:
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


class Store:
    """lrtune studies and tokens plus Optuna studies, on one database URL."""

    def __init__(self, settings: Settings, migrate: bool = True) -> None:
        self.settings = settings
        self.url = optuna_url(settings.database_url)
        self.engine = engine_for(self.url)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        if migrate:
            self.migrate()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            engine_kwargs: dict[str, Any] = (
                {"connect_args": {"timeout": 60}} if self.is_sqlite else
                {"pool_pre_ping": True})
            self.optuna_storage = optuna.storages.RDBStorage(
                self.url, engine_kwargs=engine_kwargs,
                heartbeat_interval=settings.heartbeat_interval,
                grace_period=settings.heartbeat_grace)
        self._studies: dict[int, optuna.Study] = {}
        self._optuna_ids: dict[int, int] = {}
        self._records: dict[int, StudyRecord] = {}
        self._reaped: dict[int, float] = {}
        self._noted: dict[int, float | None] = {}  # best value the study's note describes
        self._cursor = 0
        self._thread_lock = threading.Lock()

    # -- schema -----------------------------------------------------------------------------
    def migrate(self) -> None:
        """Bring lrtune's tables to the latest revision (retrying a concurrent first run)."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
        cfg.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        for attempt in range(5):
            try:
                with _MIGRATE_LOCK, self.engine.begin() as conn:
                    cfg.attributes["connection"] = conn
                    command.upgrade(cfg, "head")
                return
            except sa.exc.SQLAlchemyError:
                if attempt == 4:
                    raise
                time.sleep(0.5 * (attempt + 1))

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    # -- studies ----------------------------------------------------------------------------
    def create_study(self, spec: StudySpec, owner: str) -> StudyRecord:
        stamp = now()
        with self.engine.begin() as conn:
            if conn.execute(sa.select(studies.c.id).where(studies.c.name == spec.name)).first():
                raise Conflict(f"a study named {spec.name!r} exists")
            try:
                optuna.create_study(
                    storage=self.optuna_storage, study_name=spec.name,
                    direction=names.direction(spec))
            except optuna.exceptions.DuplicatedStudyError:
                raise Conflict(f"an Optuna study named {spec.name!r} exists") from None
            optuna_study = optuna.load_study(study_name=spec.name, storage=self.optuna_storage)
            optuna_study.set_user_attr(names.STUDY_ATTR_SPEC, spec.model_dump(mode="json"))
            name_objective(optuna_study, spec.objective)
            sid = conn.execute(studies.insert().values(
                name=spec.name, task=spec.task, spec=spec.model_dump(mode="json"),
                status=RUNNING, owner=owner, n_trials=spec.n_trials, created_at=stamp,
                updated_at=stamp)).inserted_primary_key[0]
        return self.get_study(int(sid))

    def get_study(self, study_id: int) -> StudyRecord:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(studies).where(studies.c.id == study_id)).first()
        if row is None:
            raise NotFound(f"no study {study_id}")
        return StudyRecord.from_row(row)

    def save_lr_bounds(self, study_id: int, bounds: LrBounds) -> StudyRecord:
        """Keep the first range test saved for a study (workers may race); return the record."""
        with self.engine.begin() as conn:
            conn.execute(studies.update().where(studies.c.id == study_id,
                                                studies.c.lr_range.is_(None))
                         .values(lr_range=bounds.to_dict(), updated_at=now()))
        self._records.pop(study_id, None)
        record = self.get_study(study_id)
        if record.lr_bounds is not None:  # shown in the dashboard beside the spec
            self.optuna_storage.set_study_user_attr(
                self.optuna_study_id(record), names.STUDY_ATTR_LR_RANGE,
                record.lr_bounds.summary())
        return record

    def list_studies(self, status: str | None = None, limit: int = 50, offset: int = 0
                     ) -> tuple[list[StudyRecord], int]:
        query = sa.select(studies)
        count = sa.select(sa.func.count()).select_from(studies)
        if status is not None:
            query = query.where(studies.c.status == status)
            count = count.where(studies.c.status == status)
        with self.engine.connect() as conn:
            total = conn.execute(count).scalar_one()
            rows = conn.execute(query.order_by(studies.c.id).limit(limit).offset(offset)).all()
        return [StudyRecord.from_row(r) for r in rows], int(total)

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
        with self.engine.begin() as own:
            return bool(own.execute(query.values(**values)).rowcount)

    def cancel(self, study_id: int) -> StudyRecord:
        self.get_study(study_id)
        self.set_status(study_id, CANCELLED, "cancelled by its owner")
        return self.get_study(study_id)

    def delete(self, study_id: int) -> None:
        record = self.get_study(study_id)
        with self.engine.begin() as conn:
            conn.execute(studies.delete().where(studies.c.id == study_id))
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=record.name, storage=self.optuna_storage)
        self._studies.pop(study_id, None)

    def optuna_study(self, record: StudyRecord) -> optuna.Study:
        cached = self._studies.get(record.id)
        if cached is None:
            spec = record.spec
            cached = optuna.load_study(study_name=record.name, storage=self.optuna_storage,
                                       sampler=names.make_sampler(spec.sampler),
                                       pruner=names.make_pruner(spec.pruner, spec.epochs))
            self._studies[record.id] = cached
        return cached

    def trial_counts(self, record: StudyRecord, conn: sa.Connection | None = None
                     ) -> dict[str, int]:
        """Trials per state, one grouped query on Optuna's ``trials`` table."""
        query = sa.text("SELECT state, COUNT(*) FROM trials WHERE study_id = :sid GROUP BY state")
        counts = {s.name: 0 for s in TrialState}
        with contextlib.ExitStack() as stack:
            conn = conn or stack.enter_context(self.engine.connect())
            for state, n in conn.execute(query, {"sid": self.optuna_study_id(record)}):
                counts[str(state).rsplit(".", 1)[-1]] = int(n)
        return counts

    def requeued(self, record: StudyRecord, conn: sa.Connection | None = None) -> int:
        """Failed trials that were re-queued (each copy names its original: ``retry_of``)."""
        query = sa.text("SELECT COUNT(*) FROM trial_user_attributes a JOIN trials t "
                        "ON a.trial_id = t.trial_id WHERE t.study_id = :sid "
                        "AND a.key = 'retry_of'")
        with contextlib.ExitStack() as stack:
            conn = conn or stack.enter_context(self.engine.connect())
            return int(conn.execute(query, {"sid": self.optuna_study_id(record)}).scalar_one())

    def optuna_study_id(self, record: StudyRecord) -> int:
        if record.id not in self._optuna_ids:
            self._optuna_ids[record.id] = self.optuna_storage.get_study_id_from_name(record.name)
        return self._optuna_ids[record.id]

    # -- claiming ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self, study_id: int, wait: bool = False
                ) -> Iterator[tuple[StudyRecord, sa.Connection | None] | None]:
        """Hold one study's claim lock and yield its fresh row, or None if another claimer
        holds it (PostgreSQL) or the study is gone.

        On PostgreSQL it also yields the connection holding the row lock: writes to that row
        inside the lock must go through it, or they wait on the lock forever.
        """
        query = sa.select(studies).where(studies.c.id == study_id)
        if not self.is_sqlite:
            with self.engine.begin() as conn:
                row = conn.execute(query.with_for_update(skip_locked=not wait)).first()
                yield (StudyRecord.from_row(row), conn) if row is not None else None
            return
        path = self.engine.url.database
        with self._thread_lock, contextlib.ExitStack() as stack:
            if path and path != ":memory:":
                handle = stack.enter_context(open(f"{path}.claims.lock", "a"))
                fcntl.flock(handle, fcntl.LOCK_EX)
                stack.callback(fcntl.flock, handle, fcntl.LOCK_UN)
            with self.engine.connect() as conn:
                row = conn.execute(query).first()
            yield (StudyRecord.from_row(row), None) if row is not None else None

    def claim(self, only: set[int] | None = None) -> Claim | None:
        """Claim one trial of a running study with budget left, or return None."""
        claims = self.claim_pack(1, only)
        return claims[0] if claims else None

    def claim_pack(self, want: int | None = None, only: set[int] | None = None,
                   sizer: Callable[[StudyRecord], int] | None = None) -> list[Claim]:
        """Claim up to ``want`` trials of one running study under one lock; never past the
        budget. ``want=None`` takes the study's ``pack`` (``sizer`` sizes ``"auto"``).
        Empty when there is no work."""
        with self.engine.connect() as conn:
            ids = [r[0] for r in conn.execute(sa.select(studies.c.id).where(
                studies.c.status == RUNNING).order_by(studies.c.id))]
        candidates = [i for i in ids if only is None or i in only]
        if not candidates:
            return []
        self._cursor = (self._cursor + 1) % len(candidates)
        busy = []
        for study_id in candidates[self._cursor:] + candidates[:self._cursor]:
            size = want or self._pack_size(study_id, sizer)  # sized before taking the lock
            claims = self._claim_in(study_id, size)
            if claims:
                return claims
            if claims is None:
                busy.append((study_id, size))
        for study_id, size in busy:  # every study with work was being claimed: wait for one
            claims = self._claim_in(study_id, size, wait=True)
            if claims:
                return claims
        return []

    def _pack_size(self, study_id: int, sizer: Callable[[StudyRecord], int] | None) -> int:
        """The study's ``pack``; ``"auto"`` is sized by ``sizer`` (a study's spec never
        changes, so its record is read once)."""
        if study_id not in self._records:
            try:
                self._records[study_id] = self.get_study(study_id)
            except NotFound:
                return 1
        record = self._records[study_id]
        pack = record.spec.pack
        return pack if isinstance(pack, int) else sizer(record) if sizer else 1

    def _claim_in(self, study_id: int, want: int, wait: bool = False) -> list[Claim] | None:
        """Claims of one study; None when another claimer holds its lock (and not ``wait``)."""
        with self._locked(study_id, wait) as held:
            if held is None:
                return None
            if held[0].status != RUNNING:
                return []
            record, conn = held
            study = self.optuna_study(record)
            if time.monotonic() - self._reaped.get(record.id, -1e9) > \
                    self.settings.heartbeat_interval:
                self.reap(record, study)
                self._reaped[record.id] = time.monotonic()
            counts = self.trial_counts(record, conn)
            if counts["COMPLETE"] + counts["PRUNED"] >= record.n_trials:
                self.set_status(record.id, DONE, conn=conn)
                return []
            failures = counts["FAIL"] - self.requeued(record, conn)  # lost, re-run: not failed
            if failures >= record.n_trials + self.settings.max_failures:
                self.set_status(record.id, FAILED, f"{failures} trials failed", conn=conn)
                return []
            taken = sum(counts[s.name] for s in TAKEN)
            waiting = counts["WAITING"]
            self._reseed(study, record, sum(counts.values()))
            claims = []
            while len(claims) < want and waiting > 0:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # "heartbeat is meant for optimize()"
                    claims.append(Claim(record, study, study.ask()))  # pops a WAITING retry
                waiting -= 1
            new = min(want - len(claims), record.n_trials - taken)
            if new == 1:
                claims.append(Claim(record, study, self._new_trial(study)))
            elif new > 1:
                claims += self._new_pack(record, study, new)
            taken += max(new, 0)
            for claim in claims:
                claim.last_slot = taken >= record.n_trials
            return claims

    @staticmethod
    def _reseed(study: optuna.Study, record: StudyRecord, next_number: int) -> None:
        """A seeded study's sampler draws from ``seed`` and the next trial number, so workers
        sampling at once never repeat each other's draws, and one worker replays a study
        exactly (the samplers keep no other state between trials: it is in the storage)."""
        seed = record.spec.sampler.seed
        if seed is not None:
            spec = record.spec.sampler.model_copy(update={"seed": seed * 1_000_003 + next_number})
            study.sampler = names.make_sampler(spec, previous=study.sampler)

    @staticmethod
    def _new_trial(study: optuna.Study) -> optuna.Trial:
        """``study.ask()`` when no retry waits (known under the claim lock): Optuna's ask
        first scans every unfinished trial for a WAITING one, which a pack of K RUNNING
        trials makes quadratic."""
        study._thread_local.cached_all_trials = None
        return optuna.Trial(study, study._storage.create_new_trial(study._study_id))

    def _new_pack(self, record: StudyRecord, study: optuna.Study, k: int) -> list[Claim]:
        """``k`` new trials in one statement, sampling in memory (see lrtune.pack_storage)."""
        with self.engine.begin() as conn:
            created = insert_trials(conn, study._study_id, k)
        storage = PackStorage(study._storage, study._study_id, created)
        view = pack_study(study, storage)
        return [Claim(record, view, optuna.Trial(view, tid), params=storage)
                for tid, _ in created]

    def reap(self, record: StudyRecord, study: optuna.Study) -> int:
        """Fail RUNNING trials whose worker went silent (reason ``lost``) and re-queue them."""
        stale = self.optuna_storage._get_stale_trial_ids(study._study_id)
        stale += self._trials_without_heartbeat(study._study_id)
        for trial_id in stale:
            reason = f"lost: no heartbeat for {self.settings.heartbeat_grace} s"
            if self.fail_and_requeue(trial_id, reason, count_retry=True):
                log.warning("study %s trial id %d lost (no heartbeat); re-queued", record.name,
                            trial_id)
        return len(stale)

    def record_heartbeats(self, trial_ids: list[int]) -> None:
        """Optuna's heartbeat rows of these trials, set to the database's now in one
        transaction (Optuna's ``record_heartbeat`` takes one per trial: a second for a pack
        of 1,024 on PostgreSQL). The reaper compares them with the database's clock too."""
        beats, trials = HEARTBEATS, OPTUNA_TABLES["trials"]
        with self.engine.begin() as conn:
            for start in range(0, len(trial_ids), ID_BATCH):
                chunk = trial_ids[start:start + ID_BATCH]
                beaten = set(conn.execute(
                    beats.update().where(beats.c.trial_id.in_(chunk))
                    .values(heartbeat=sa.func.now()).returning(beats.c.trial_id)).scalars())
                first = [trial_id for trial_id in chunk if trial_id not in beaten]
                if first:
                    conn.execute(beats.insert().from_select(
                        ["trial_id", "heartbeat"], sa.select(trials.c.trial_id, sa.func.now())
                        .where(trials.c.trial_id.in_(first))))

    def _trials_without_heartbeat(self, optuna_study_id: int) -> list[int]:
        """RUNNING trials that never beat (worker killed right after claiming) past the grace.

        Optuna stores ``datetime_start`` as naive UTC.
        """
        cutoff = (datetime.now(UTC) - timedelta(seconds=self.settings.heartbeat_grace)
                  ).replace(tzinfo=None)
        query = sa.text(
            "SELECT t.trial_id FROM trials t LEFT JOIN trial_heartbeats h "
            "ON h.trial_id = t.trial_id WHERE t.study_id = :sid AND t.state = 'RUNNING' "
            "AND h.trial_id IS NULL AND t.datetime_start < :cutoff")
        with self.engine.connect() as conn:
            return [int(r[0]) for r in conn.execute(query, {"sid": optuna_study_id,
                                                            "cutoff": cutoff})]

    def fail_and_requeue(self, trial_id: int, reason: str, count_retry: bool) -> bool:
        """In one transaction, so no crash can split them: the RUNNING trial goes FAIL with
        ``reason`` and, within the retry limit, a WAITING copy with the same params is queued
        (``retry_of`` = its number). False when the trial had already finished.

        Call under the study's claim lock: the copy takes the next trial number.
        """
        frozen = self.optuna_storage.get_trial(trial_id)
        history = list(frozen.system_attrs.get("retry_history", []))
        if count_retry:
            history.append(frozen.number)
        again = not count_retry or len(history) <= self.settings.max_retries
        t = OPTUNA_TABLES
        now = datetime.now(UTC).replace(tzinfo=None)  # Optuna stores naive UTC
        with self.engine.begin() as conn:
            if not conn.execute(t["trials"].update().where(
                    t["trials"].c.trial_id == trial_id,
                    t["trials"].c.state == TrialState.RUNNING).values(
                    state=TrialState.FAIL, datetime_complete=now)).rowcount:
                return False
            attrs = t["user_attrs"]
            conn.execute(attrs.delete().where(attrs.c.trial_id == trial_id,
                                              attrs.c.key == names.ATTR_REASON))
            conn.execute(attrs.insert().values(trial_id=trial_id, key=names.ATTR_REASON,
                                               value_json=json.dumps(reason)))
            if not again:
                return True
            study_id = conn.execute(sa.select(t["trials"].c.study_id).where(
                t["trials"].c.trial_id == trial_id)).scalar_one()
            number = conn.execute(sa.select(sa.func.count()).select_from(t["trials"]).where(
                t["trials"].c.study_id == study_id)).scalar_one()
            copy_id = conn.execute(t["trials"].insert().values(
                number=number, study_id=study_id, state=TrialState.WAITING)
            ).inserted_primary_key[0]
            if frozen.params:
                conn.execute(t["params"].insert(), [
                    {"trial_id": copy_id, "param_name": name,
                     "param_value": frozen.distributions[name].to_internal_repr(value),
                     "distribution_json": distribution_to_json(frozen.distributions[name])}
                    for name, value in frozen.params.items()])
            conn.execute(attrs.insert().values(trial_id=copy_id, key="retry_of",
                                               value_json=json.dumps(frozen.number)))
            original = frozen.system_attrs.get("failed_trial", frozen.number)
            conn.execute(t["system_attrs"].insert(), [
                {"trial_id": copy_id, "key": "failed_trial", "value_json": json.dumps(original)},
                {"trial_id": copy_id, "key": "retry_history",
                 "value_json": json.dumps(history)}])
        return True

    def finish(self, claim: Claim, state: TrialState, value: float | None) -> None:
        """Record the trial's end; a study whose budget is complete becomes ``done``."""
        if state == TrialState.COMPLETE:
            claim.study.tell(claim.trial, value)
            self.note_best(claim.record, value)
        else:
            claim.study.tell(claim.trial, state=state)
        if claim.last_slot:  # with slots still unclaimed this cannot be the last trial
            self.mark_done_if_complete(claim.record)

    def note_best(self, record: StudyRecord, value: float | None = None) -> None:
        """Keep the study's dashboard note on its best trial, written under the claim lock
        (one writer per study); ``value``, the trial just finished, skips the check when it
        cannot be a new best. A failure here never fails a trial."""
        noted = self._noted.get(record.id)
        if value is not None and noted is not None:
            minimize = names.direction(record.spec) == "minimize"
            if (value >= noted) if minimize else (value <= noted):
                return
        study_id = self.optuna_study_id(record)
        try:
            if note_is_stale(self.optuna_storage, study_id):
                with self._locked(record.id, wait=True) as held:
                    if held is not None:
                        update_best_note(self.optuna_storage, study_id)
            self._noted[record.id] = self.optuna_storage.get_best_trial(study_id).value
        except Exception as error:  # noqa: BLE001 - cosmetic: log and go on
            log.warning("study %s: best-schedule note not written: %s", record.name, error)

    def mark_done_if_complete(self, record: StudyRecord) -> dict[str, int]:
        counts = self.trial_counts(record)
        if record.status == RUNNING and counts["COMPLETE"] + counts["PRUNED"] >= record.n_trials:
            self.set_status(record.id, DONE)
        return counts

    def hand_back(self, claims: list[Claim], reason: str) -> None:
        """Give claimed trials back unfinished: FAIL with ``reason`` and WAITING copies, under
        the study's claim lock so no claimer sees the slots free in between."""
        if not claims:
            return
        with self._locked(claims[0].record.id, wait=True):
            for claim in claims:
                self.fail_and_requeue(claim.trial._trial_id, reason, count_retry=False)

    # -- tokens -----------------------------------------------------------------------------
    def create_token(self, name: str) -> str:
        token = "lrt_" + secrets.token_urlsafe(32)
        with self.engine.begin() as conn:
            conn.execute(tokens.insert().values(name=name, token_hash=hash_token(token),
                                                created_at=now()))
        return token

    def token_owner(self, token: str) -> str | None:
        """The owner id of a valid token (its hash prefix), or None."""
        digest = hash_token(token)
        env = [t.strip() for t in self.settings.api_tokens.split(",") if t.strip()]
        if any(secrets.compare_digest(digest, hash_token(t)) for t in env):
            return digest[:16]
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(tokens.c.id).where(
                tokens.c.token_hash == digest, tokens.c.revoked_at.is_(None))).first()
        return digest[:16] if row is not None else None


