"""Claims: a worker takes one trial or a pack of a running study, never past its budget.

Budget rule: a study never holds more than ``n_trials`` trials in RUNNING, WAITING, COMPLETE
or PRUNED. Claims serialise per study: ``SELECT … FOR UPDATE SKIP LOCKED`` on the study's row
in PostgreSQL; in SQLite a file lock beside the database (Optuna writes through its own
connection, so a write transaction held across ``ask()`` would deadlock SQLite).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import optuna
import sqlalchemy as sa

from lrtune import horizon
from lrtune import optuna_internals as internals
from lrtune import study as names
from lrtune.errors import DatabaseUnavailable, NotFound
from lrtune.history import replaced
from lrtune.settings import Settings
from lrtune.store import trials
from lrtune.store.db import Database
from lrtune.store.pack_storage import PackStorage
from lrtune.store.reaping import Reaper
from lrtune.store.studies import FAILED, RUNNING, Studies, StudyRecord, ended
from lrtune.tables import studies

Held = tuple[StudyRecord, sa.Connection | None]
BROKEN_PAUSE = 60  # seconds a claimer leaves a study alone after claiming from it failed
log = logging.getLogger("lrtune.store")


@dataclass
class Claim:
    record: StudyRecord
    study: optuna.Study
    trial: optuna.Trial
    last_slot: bool = True  # the budget was fully taken with this claim
    params: PackStorage | None = None  # holds the trial's sampled params until written
    rung: horizon.Rung | None = None  # a horizon ladder's run: its rung and horizon

    @property
    def trial_id(self) -> int:
        return internals.trial_id(self.trial)


class ClaimLock:
    """Each study's claim lock (also held to write its dashboard note and hand trials back)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._thread_lock = threading.Lock()
        # one per study while a claimer uses it (weak: a study no one claims holds nothing)
        self._study_locks: weakref.WeakValueDictionary[int, threading.Lock] = \
            weakref.WeakValueDictionary()

    @contextlib.contextmanager
    def hold(self, study_id: int, wait: bool = False) -> Iterator[Held | None]:
        """Hold one study's claim lock and yield its fresh row, or None if another claimer
        holds it (PostgreSQL) or the study is gone.

        On PostgreSQL it also yields the connection holding the row lock: writes to that row
        inside the lock must go through it, or they wait on the lock forever.
        """
        query = sa.select(studies).where(studies.c.id == study_id)
        if not self.db.is_sqlite:
            # Threads of one process queue here, holding no connection: a pool full of
            # claimers waiting on the row lock would starve the holder of the connection
            # it needs to create trials.
            with self._thread_lock:
                local = self._study_locks.get(study_id)
                if local is None:
                    local = self._study_locks[study_id] = threading.Lock()
            if not local.acquire(blocking=wait):
                yield None
                return
            try:
                with self.db.transaction() as conn:
                    row = conn.execute(query.with_for_update(skip_locked=not wait)).first()
                    yield (StudyRecord.from_row(row), conn) if row is not None else None
            finally:
                local.release()
            return
        with self._thread_lock, self.db.file_lock("claims"):
            with self.db.transaction() as conn:
                row = conn.execute(query).first()
            yield (StudyRecord.from_row(row), None) if row is not None else None


class Claims:
    def __init__(self, db: Database, studies: Studies, reaper: Reaper, lock: ClaimLock,
                 settings: Settings) -> None:
        self.db, self.studies, self.reaper, self.lock = db, studies, reaper, lock
        self.settings = settings
        self._records: dict[int, StudyRecord] = {}
        self._reaped: dict[int, float] = {}
        self._broken: dict[int, float] = {}  # study id -> when claiming it last failed
        self._cursor = 0

    def claim_pack(self, want: int | None = None, only: set[int] | None = None,
                   sizer: Callable[[StudyRecord], int] | None = None,
                   external: bool | None = False, owner: str | None = None,
                   most: int | None = None) -> list[Claim]:
        """Claim up to ``want`` trials of one running study under one lock; never past the
        budget. ``want=None`` takes the study's ``pack`` (``sizer`` sizes ``"auto"``), at
        most ``most``.
        ``external`` and ``owner`` choose the studies as ``Studies.running_ids`` does
        (lrtune's workers never claim an external study). Empty when there is no work."""
        stamp = time.monotonic()
        candidates = [i for i in self.studies.running_ids(external, owner)
                      if (only is None or i in only)
                      and stamp - self._broken.get(i, -BROKEN_PAUSE) >= BROKEN_PAUSE]
        if not candidates:
            return []
        self._cursor = (self._cursor + 1) % len(candidates)
        busy = []
        for study_id in candidates[self._cursor:] + candidates[:self._cursor]:
            claims = self._try(study_id, want, sizer, most=most)
            if claims:
                return claims
            if claims is None:
                busy.append(study_id)
        for study_id in busy:  # every study with work was being claimed: wait for one
            claims = self._try(study_id, want, sizer, wait=True, most=most)
            if claims:
                return claims
        return []

    def _try(self, study_id: int, want: int | None,
             sizer: Callable[[StudyRecord], int] | None, wait: bool = False,
             most: int | None = None) -> list[Claim] | None:
        """``_claim_in``, with one study's own error kept to that study: logged, and the
        study left alone for a while by this claimer (other studies go on)."""
        try:
            size = want or self._pack_size(study_id, sizer)  # sized before taking the lock
            size = min(size, most) if most else size
            return self._claim_in(study_id, size, wait)
        except DatabaseUnavailable:
            raise
        except Exception:  # noqa: BLE001 - one study's failure is not every study's
            log.exception("study %d: claiming failed; skipped for %d s", study_id,
                          BROKEN_PAUSE)
            self._broken[study_id] = time.monotonic()
            return []

    def _pack_size(self, study_id: int, sizer: Callable[[StudyRecord], int] | None) -> int:
        """The study's ``pack``; ``"auto"`` is sized by ``sizer`` (a study's spec never
        changes, so its record is read once)."""
        if study_id not in self._records:
            try:
                self._records[study_id] = self.studies.get(study_id)
            except NotFound:
                return 1
        record = self._records[study_id]
        pack = record.spec.pack
        return pack if isinstance(pack, int) else sizer(record) if sizer else 1

    def _claim_in(self, study_id: int, want: int, wait: bool = False) -> list[Claim] | None:
        """Claims of one study; None when another claimer holds its lock (and not ``wait``)."""
        with self.lock.hold(study_id, wait) as held:
            if held is None:
                return None
            if held[0].status != RUNNING:
                return []
            record, conn = held
            try:
                study = self.studies.optuna_study(record)
                optuna_id = internals.study_id(study)
                with self._reading(conn) as reading:
                    self.studies.check_optuna_study(reading, record, optuna_id)
            except NotFound as missing:  # removed behind lrtune's back: nothing to claim
                self.studies.forget(record.id)
                self.studies.set_status(record.id, FAILED, str(missing), conn=conn)
                log.warning("study %s failed: %s", record.name, missing)
                return []
            if time.monotonic() - self._reaped.get(record.id, -1e9) > \
                    self.settings.heartbeat_interval:
                self.reaper.reap(record.name, optuna_id)
                self._reaped[record.id] = time.monotonic()
            with self._reading(conn) as reading:
                counts = trials.counts(reading, optuna_id)
                requeued = trials.requeued(reading, optuna_id)
            if counts["COMPLETE"] + counts["PRUNED"] >= record.n_trials:
                self.studies.set_status(record.id, *ended(counts), conn=conn)
                return []
            failures = counts["FAIL"] - requeued  # lost and re-run: not failed
            if failures >= record.n_trials + self.settings.max_failures:
                self.studies.set_status(record.id, FAILED, f"{failures} trials failed",
                                        conn=conn)
                return []
            taken = sum(counts[s.name] for s in trials.TAKEN)
            waiting = counts["WAITING"]
            self._reseed(study, record, sum(counts.values()))
            ladder = record.spec.pruner.name == "horizon"
            claims: list[Claim] = []
            while len(claims) < want and waiting > 0:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # "heartbeat is meant for optimize()"
                    trial = study.ask()  # pops a WAITING retry
                claims.append(Claim(record, study, trial,
                                    rung=horizon.rung_of(trial) if ladder else None))
                waiting -= 1
            new = min(want - len(claims), record.n_trials - taken)
            if ladder and new > 0:
                claims += self._ladder(record, study, new, record.n_trials - taken)
            elif new == 1:
                claims.append(Claim(record, study, internals.new_trial(study)))
            elif new > 1:
                claims += self._new_pack(record, study, new)
            taken += max(new, 0)
            for claim in claims:
                claim.last_slot = taken >= record.n_trials
            return claims

    @contextlib.contextmanager
    def _reading(self, conn: sa.Connection | None) -> Iterator[sa.Connection]:
        """The claim's connection where it holds one, else a transaction of its own."""
        if conn is not None:
            yield conn
            return
        with self.db.transaction() as own:
            yield own

    @staticmethod
    def _reseed(study: optuna.Study, record: StudyRecord, next_number: int) -> None:
        """A seeded study's sampler draws from ``seed`` and the next trial number, so workers
        sampling at once never repeat each other's draws, and one worker replays a study
        exactly (the samplers keep no other state between trials: it is in the storage)."""
        seed = record.spec.sampler.seed
        if seed is not None:
            spec = record.spec.sampler.model_copy(
                update={"seed": names.derived_seed(seed, next_number)})
            study.sampler = replaced(study.sampler,
                                     lambda base: names.make_sampler(spec, previous=base))

    def _ladder(self, record: StudyRecord, study: optuna.Study, k: int, slots_left: int
                ) -> list[Claim]:
        """``k`` new runs of a horizon ladder, each on the rung ``horizon.next_rung`` gives
        (it sees the runs made before it): one light read of the study's runs per new run,
        and the parameters of a promoted run alone."""
        spec = record.search_spec
        bounds = horizon.lr_bounds(spec)
        storage = internals.storage_of(study)
        claims = []
        for i in range(k):
            with self.db.read() as conn:
                runs = trials.ladder_runs(conn, internals.study_id(study))
            rung = horizon.next_rung(runs, spec.pruner, study.direction, slots_left - i,
                                     record.n_trials, bounds,
                                     lambda run: dict(storage.get_trial(run.ref).params))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "heartbeat is meant for optimize()"
                claims.append(Claim(record, study, horizon.start(study, rung), rung=rung))
        return claims

    def _new_pack(self, record: StudyRecord, study: optuna.Study, k: int) -> list[Claim]:
        """``k`` new trials in one statement, sampling in memory (see store.pack_storage)."""
        optuna_id = internals.study_id(study)
        with self.db.transaction() as conn:
            created = trials.insert_trials(conn, optuna_id, k)
        storage = PackStorage(internals.storage_of(study), optuna_id, created)
        view = internals.study_view(study, storage)
        return [Claim(record, view, optuna.Trial(view, tid), params=storage)
                for tid, _ in created]

    def hand_back(self, claims: list[Claim], reason: str) -> None:
        """Give claimed trials back unfinished: FAIL with ``reason`` and WAITING copies, under
        the study's claim lock so no claimer sees the slots free in between."""
        if claims:
            self.hand_back_ids(claims[0].record.id, [c.trial_id for c in claims], reason)

    def hand_back_ids(self, study_id: int, trial_ids: list[int], reason: str) -> None:
        if not trial_ids:
            return
        with self.lock.hold(study_id, wait=True):
            for trial_id in trial_ids:
                self.reaper.fail_and_requeue(trial_id, reason, count_retry=False)
