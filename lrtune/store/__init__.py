"""The one database interface of service and workers: lrtune's tables and Optuna's storage.

A thin facade over modules of one job each: ``db`` (engine, migrations, ``transaction()``),
``studies``, ``tokens``, ``claims``, ``trials`` (trial records, and the one way a trial ends),
``reaping``. Routes and workers call the facade; none of them writes SQL of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import Engine

from lrtune import optuna_internals as internals
from lrtune import study as names
from lrtune import tables
from lrtune.dashboard import BestNotes
from lrtune.errors import Conflict, DatabaseUnavailable, NotFound
from lrtune.lr_range import LrBounds
from lrtune.settings import Settings
from lrtune.spec import StudySpec
from lrtune.store import reads, stats, trials
from lrtune.store.claims import Claim, ClaimLock, Claims
from lrtune.store.db import (
    UNAVAILABLE,
    Database,
    GuardedStorage,
    Pool,
    open_pool,
    optuna_storage,
    sqlalchemy_url,
    unavailable,
)
from lrtune.store.leases import Leases
from lrtune.store.pack_storage import PackStorage
from lrtune.store.reads import Summary, TrialRow
from lrtune.store.reaping import Reaper
from lrtune.store.studies import (
    CANCELLED,
    DONE,
    FAILED,
    RUNNING,
    STATUSES,
    Quota,
    Status,
    Studies,
    StudyRecord,
    ended,
)
from lrtune.store.studies import page as studies_page
from lrtune.store.tokens import Principal, TokenRow, Tokens
from lrtune.store.trials import Ending

__all__ = ["CANCELLED", "DONE", "FAILED", "RUNNING", "STATUSES", "Claim", "Conflict",
           "DatabaseUnavailable", "Ending", "NotFound", "Principal", "Quota", "Status", "Store",
           "StudyRecord", "TokenRow", "ended", "sqlalchemy_url"]


class Store:
    """lrtune studies and tokens plus Optuna studies, on one database URL."""

    def __init__(self, settings: Settings, migrate: bool = True) -> None:
        self.settings = settings
        pool = Pool(settings.db_pool_size, settings.db_max_overflow, settings.db_pool_timeout)
        self.db = Database(settings.connection_url(), pool)
        with self.db.schema_lock() as locked:
            if migrate:
                self.db.migrate(locked)
            self.optuna_storage: GuardedStorage = optuna_storage(
                settings.connection_url(), settings.heartbeat_interval,
                settings.heartbeat_grace, pool)
            if migrate:
                stats.install(self.db, locked)
        self.studies = Studies(self.db, self.optuna_storage)
        self.tokens = Tokens(self.db, settings.api_tokens.get_secret_value(),
                             settings.worker_tokens.get_secret_value())
        self.lock = ClaimLock(self.db)
        self.reaper = Reaper(self.db, self.optuna_storage, settings.heartbeat_grace,
                             settings.max_retries)
        self.claims = Claims(self.db, self.studies, self.reaper, self.lock, settings)
        self.finished_params = reads.FinishedParams()
        self.leases = Leases(self)
        self.notes = BestNotes(self.optuna_storage,
                               lambda study_id: self.lock.hold(study_id, wait=True))

    @property
    def engine(self) -> Engine:
        return self.db.engine

    def transaction(self) -> AbstractContextManager[sa.Connection]:
        return self.db.transaction()

    def open_pools(self) -> None:
        """Open both engines' kept connections now (see ``db.open_pool``)."""
        try:
            open_pool(self.db.engine)
            open_pool(self.optuna_storage.engine)
        except UNAVAILABLE as error:
            raise unavailable(error) from error

    def ping(self) -> None:
        self.db.ping()

    # -- studies ----------------------------------------------------------------------------
    def create_study(self, spec: StudySpec, owner: str, quota: Quota | None = None
                     ) -> StudyRecord:
        return self.studies.create(spec, owner, quota)

    def get_study(self, study_id: int) -> StudyRecord:
        return self.studies.get(study_id)

    def list_studies(self, status: str | None = None, limit: int = 50, offset: int = 0
                     ) -> tuple[list[StudyRecord], int]:
        return self.studies.page(status, limit, offset)

    def studies_by_status(self) -> dict[str, int]:
        return self.studies.by_status()

    def set_status(self, study_id: int, status: str, reason: str | None = None,
                   only_from: str | None = RUNNING) -> bool:
        return self.studies.set_status(study_id, status, reason, only_from)

    def cancel(self, study_id: int) -> StudyRecord:
        return self.studies.cancel(study_id)

    def delete(self, study_id: int) -> None:
        self.studies.delete(study_id)
        self.leases.judge.forget(study_id)

    def save_lr_bounds(self, study_id: int, bounds: LrBounds) -> StudyRecord:
        return self.studies.save_lr_bounds(study_id, bounds)

    def optuna_study(self, record: StudyRecord) -> optuna.Study:
        return self.studies.optuna_study(record)

    def optuna_study_id(self, record: StudyRecord) -> int:
        return self.studies.optuna_id(record)

    # -- the read path (lrtune/store/reads.py): a few queries whatever the trial count --------
    def study_page(self, status: str | None, limit: int, offset: int
                   ) -> tuple[list[tuple[StudyRecord, Summary]], int]:
        """A page of studies with their summaries, and how many there are: one transaction
        of one query (and one for specs and parameters not kept yet)."""
        with self.db.transaction() as conn:
            return studies_page(conn, status, limit, offset, self.finished_params)

    def study_summary(self, study_id: int) -> tuple[StudyRecord, Summary]:
        """One study and its summary: one query; NotFound when there is none."""
        with self.db.transaction() as conn:
            rows = conn.execute(reads.summarised(sa.select(tables.studies).where(
                tables.studies.c.id == study_id).subquery())).all()
            found = reads.collect(conn, rows, self.finished_params)
        if study_id not in found:
            raise NotFound(f"no study {study_id}")
        row, summary = found[study_id]
        return StudyRecord.from_row(row), summary

    def trial_page(self, study_id: int, limit: int, offset: int
                   ) -> tuple[list[TrialRow], int]:
        """The study's trials ``offset`` to ``offset + limit`` by number, and how many it
        has, in one transaction; NotFound when there is no such study (or its Optuna
        study is gone)."""
        with self.db.transaction() as conn:
            name = conn.execute(sa.select(tables.studies.c.name).where(
                tables.studies.c.id == study_id)).scalar()
            if name is None:
                raise NotFound(f"no study {study_id}")
            found = reads.optuna_id_and_total(conn, name)
            if found is None:
                raise NotFound(f"study {study_id} ({name}) has no Optuna study any more")
            rows = reads.trial_page(conn, found[0], limit, offset, self.finished_params)
        return rows, found[1]

    def trial(self, record: StudyRecord, number: int) -> FrozenTrial:
        """One trial of the study, whole (curves and attributes); NotFound naming
        ``number`` when the study has no such trial."""
        storage = self.optuna_storage
        try:
            return storage.get_trial(storage.get_trial_id_from_study_id_trial_number(
                self.optuna_study_id(record), number))
        except KeyError:
            raise NotFound(f"study {record.id} has no trial {number}", "number") from None

    def all_trials(self, record: StudyRecord) -> list[FrozenTrial]:
        try:
            return self.optuna_storage.get_all_trials(self.optuna_study_id(record),
                                                      deepcopy=False)
        except KeyError:
            raise NotFound(f"study {record.id} ({record.name}) has no Optuna study any "
                           "more") from None

    def trial_counts(self, record: StudyRecord, optuna_id: int | None = None
                     ) -> dict[str, int]:
        """Trials per state, one grouped query (``optuna_id``: where the caller holds it)."""
        if optuna_id is None:
            optuna_id = self.optuna_study_id(record)
        with self.db.read() as conn:
            return trials.counts(conn, optuna_id)

    def requeued(self, record: StudyRecord) -> int:
        optuna_id = self.optuna_study_id(record)
        with self.db.read() as conn:
            return trials.requeued(conn, optuna_id)

    def mark_done_if_complete(self, record: StudyRecord, optuna_id: int | None = None
                              ) -> dict[str, int]:
        counts = self.trial_counts(record, optuna_id)
        if record.status == RUNNING and counts["COMPLETE"] + counts["PRUNED"] >= record.n_trials:
            self.studies.set_status(record.id, *ended(counts))
        return counts

    # -- claims and trial records ------------------------------------------------------------
    def claim(self, only: set[int] | None = None) -> Claim | None:
        """Claim one trial of a running study with budget left, or return None."""
        claims = self.claims.claim_pack(1, only)
        return claims[0] if claims else None

    def claim_pack(self, want: int | None = None, only: set[int] | None = None,
                   sizer: Callable[[StudyRecord], int] | None = None,
                   external: bool | None = False, owner: str | None = None,
                   most: int | None = None) -> list[Claim]:
        return self.claims.claim_pack(want, only, sizer, external, owner, most)

    def hand_back(self, claims: list[Claim], reason: str) -> None:
        self.claims.hand_back(claims, reason)

    def hand_back_ids(self, record: StudyRecord, trial_ids: list[int], reason: str) -> None:
        """``hand_back`` by trial id (a lease's trials)."""
        self.claims.hand_back_ids(record.id, trial_ids, reason)

    def record_heartbeats(self, trial_ids: list[int]) -> None:
        """The heartbeat of every trial of a pack in one transaction."""
        with self.db.transaction() as conn:
            trials.record_heartbeats(conn, trial_ids)

    def reap(self, record: StudyRecord) -> int:
        return self.reaper.reap(record.name, self.optuna_study_id(record))

    def fail_and_requeue(self, trial_id: int, reason: str, count_retry: bool) -> bool:
        return self.reaper.fail_and_requeue(trial_id, reason, count_retry)

    def finished_trials(self, record: StudyRecord, known: set[int],
                        optuna_id: int | None = None) -> list[FrozenTrial]:
        """The study's COMPLETE and PRUNED trials whose numbers are not in ``known``
        (``optuna_id``: its Optuna study's id, where the caller holds it)."""
        table = internals.TRIALS
        if optuna_id is None:
            optuna_id = self.optuna_study_id(record)
        with self.db.read() as conn:
            ids = [trial_id for trial_id, number in conn.execute(
                sa.select(table.c.trial_id, table.c.number).where(
                    table.c.study_id == optuna_id,
                    table.c.state.in_([TrialState.COMPLETE, TrialState.PRUNED])))
                   if number not in known]
            return internals.read_trials(conn, ids)

    def read_trials(self, trial_ids: Sequence[int]) -> list[FrozenTrial]:
        """These trials as Optuna's storage gives them, by number, in one read."""
        with self.db.read() as conn:
            return internals.read_trials(conn, trial_ids)

    def write_trials(self, record: StudyRecord, *, params: Sequence[PackStorage] = (),
                     intermediate: Sequence[dict[str, Any]] = (),
                     user_attrs: Sequence[dict[str, Any]] = (),
                     endings: Sequence[Ending] = (), last_slot: bool = False,
                     end_attrs: Mapping[int, Sequence[dict[str, Any]]] | None = None
                     ) -> list[Ending]:
        """A batch of claimed trials' rows in one transaction (sampled params first, then
        reported values, attributes and endings); the endings applied. ``end_attrs``: user
        attributes by trial id, set (replacing) only on the trials whose ending applied. A
        new best rewrites the study's note; with ``last_slot``, a complete budget makes the
        study ``done``."""
        with self.db.transaction() as conn:
            applied = self.write_rows(conn, record, params=params, intermediate=intermediate,
                                      user_attrs=user_attrs, endings=endings,
                                      end_attrs=end_attrs)
        self.after_endings(record, applied, bool(endings) and last_slot)
        return applied

    def write_rows(self, conn: sa.Connection, record: StudyRecord, *,
                   params: Sequence[PackStorage] = (),
                   intermediate: Sequence[dict[str, Any]] = (),
                   user_attrs: Sequence[dict[str, Any]] = (), endings: Sequence[Ending] = (),
                   end_attrs: Mapping[int, Sequence[dict[str, Any]]] | None = None
                   ) -> list[Ending]:
        """``write_trials``' rows in the caller's transaction; the endings applied, which
        the caller passes to ``after_endings`` once it commits."""
        for buffered in params:
            buffered.write_params(conn)
        trials.bulk_insert(conn, internals.INTERMEDIATE, list(intermediate))
        trials.bulk_insert(conn, internals.USER_ATTRS, list(user_attrs))
        if not endings:
            return []
        applied = trials.end_trials(conn, self.optuna_study_id(record), endings, record.name)
        if end_attrs:
            trials.replace_attrs(conn, [row for e in applied
                                        for row in end_attrs.get(e.trial_id, ())])
        return applied

    def after_endings(self, record: StudyRecord, applied: Sequence[Ending],
                      last_slot: bool) -> None:
        """After endings commit: a new best rewrites the study's note; with ``last_slot``, a
        complete budget makes the study ``done``."""
        completed = [e.value for e in applied
                     if e.state == TrialState.COMPLETE and e.value is not None]
        optuna_id = self.optuna_study_id(record) if completed or last_slot else None
        if completed and optuna_id is not None:
            minimize = names.direction(record.spec) == "minimize"
            self.notes.update(record.id, optuna_id, record.name, minimize,
                              min(completed) if minimize else max(completed))
        if last_slot:  # with slots still unclaimed this cannot be the last trial
            self.mark_done_if_complete(record, optuna_id)

    def finish(self, claim: Claim, state: TrialState, value: float | None) -> bool:
        """End one claimed trial (see ``trials.end_trials``); False when it had already
        ended (reaped as lost meanwhile)."""
        ending = Ending(claim.trial_id, claim.trial.number, state, value)
        return bool(self.write_trials(claim.record, endings=[ending],
                                      last_slot=claim.last_slot))

    def note_best(self, record: StudyRecord, value: float | None = None) -> None:
        minimize = names.direction(record.spec) == "minimize"
        self.notes.update(record.id, self.optuna_study_id(record), record.name, minimize,
                          value)

    # -- tokens -----------------------------------------------------------------------------
    def create_token(self, name: str, role: str = "owner") -> str:
        return self.tokens.create(name, role)

    def token_owner(self, token: str) -> str | None:
        return self.tokens.owner(token)

    def principal(self, token: str) -> Principal | None:
        return self.tokens.principal(token)

    def list_tokens(self) -> list[TokenRow]:
        return self.tokens.list()

    def revoke_token(self, token_id: int) -> None:
        self.tokens.revoke(token_id)

    def open_session(self, principal: Principal) -> tuple[str, datetime]:
        return self.tokens.open_session(principal, self.settings.session_hours)

    def session_principal(self, value: str) -> Principal | None:
        return self.tokens.session_principal(value)

    def close_session(self, value: str) -> None:
        self.tokens.close_session(value)
