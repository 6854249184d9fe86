"""Bookkeeping of a claimed pack in a few round trips, in Optuna's own tables.

Fused training finishes trials far faster than Optuna's per-call path (one transaction per
report, per attribute, per tell) can record them. A ``PackLedger`` buffers the pack's
per-epoch values, attributes and endings and writes them in one transaction per epoch; the
pruner decides in memory, on a snapshot of the study's finished trials (refreshed once per
epoch, adding only what is new) plus the pack's own values. The rows are Optuna's, so the
dashboard and the samplers see packed trials as any others.
"""

from __future__ import annotations

import json
import logging
import warnings
from datetime import UTC, datetime
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.storages._rdb import models
from optuna.trial import TrialState

from lrtune.dashboard import curve_artifact_attr
from lrtune.pack_storage import bulk_insert
from lrtune.store import OPTUNA_TABLES, Claim, Store
from lrtune.study import make_pruner

log = logging.getLogger("lrtune.store")
TABLES = OPTUNA_TABLES


class PackLedger:
    def __init__(self, store: Store, claims: list[Claim]) -> None:
        self.store = store
        self.claims = {c.trial.number: c for c in claims}
        record = claims[0].record
        self.record = record
        self.study_id = store.optuna_study_id(record)
        self.last_slot = any(c.last_slot for c in claims)
        self.params = list({id(c.params): c.params for c in claims if c.params}.values())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.memory = optuna.create_study(
                study_name=record.name, direction=claims[0].study.direction,
                pruner=make_pruner(record.spec.pruner, record.spec.epochs))
        self.seen: set[int] = set()
        self.mirror: dict[int, int] = {}  # real trial number -> in-memory trial id
        self.epoch = -1
        self.values: list[dict[str, Any]] = []
        self.user_attrs: list[dict[str, Any]] = []
        self.endings: list[tuple[int, TrialState, float | None]] = []

    # -- pruning in memory --------------------------------------------------------------------
    def _refresh(self, epoch: int) -> None:
        """Add the study's trials finished since the last look (ids first, then only those)."""
        if epoch == self.epoch or isinstance(self.memory.pruner, optuna.pruners.NopPruner):
            return
        self.epoch = epoch
        query = sa.select(TABLES["trials"].c.trial_id, TABLES["trials"].c.number).where(
            TABLES["trials"].c.study_id == self.study_id,
            TABLES["trials"].c.state.in_([TrialState.COMPLETE, TrialState.PRUNED]))
        with self.store.engine.connect() as conn:
            new = [trial_id for trial_id, number in conn.execute(query)
                   if number not in self.seen and number not in self.claims]
        fresh = [self.store.optuna_storage.get_trial(trial_id) for trial_id in new]
        if fresh:
            self.memory.add_trials(fresh)
            self.seen.update(t.number for t in fresh)

    def report(self, number: int, epoch: int, value: float) -> None:
        self._refresh(epoch)
        trial_id = self.claims[number].trial._trial_id
        stored, kind = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(value)
        self.values.append({"trial_id": trial_id, "step": epoch, "intermediate_value": stored,
                            "intermediate_value_type": kind})
        if number not in self.mirror:
            self.mirror[number] = self.memory._storage.create_new_trial(self.memory._study_id)
        self.memory._storage.set_trial_intermediate_value(self.mirror[number], epoch, value)

    def should_prune(self, number: int) -> bool:
        trial_id = self.mirror.get(number)
        if trial_id is None:
            return False
        frozen = self.memory._storage.get_trial(trial_id)
        return bool(self.memory.pruner.prune(self.memory, frozen))

    # -- buffered writes ------------------------------------------------------------------------
    def set_user_attr(self, number: int, key: str, value: Any) -> None:
        self.user_attrs.append({"trial_id": self.claims[number].trial._trial_id, "key": key,
                                "value_json": json.dumps(value)})

    def finish(self, number: int, state: TrialState, value: float | None) -> None:
        self.endings.append((number, state, value))

    def _ended(self, conn: sa.Connection, now: datetime
               ) -> list[tuple[int, TrialState, float | None]]:
        """Set the buffered endings' states, one statement per state; the endings applied (a
        trial reaped as lost meanwhile stays as it is: its re-queued copy runs instead)."""
        trials = TABLES["trials"]
        applied = []
        for state in {state for _, state, _ in self.endings}:
            group = {self.claims[n].trial._trial_id: (n, state, v)
                     for n, s, v in self.endings if s == state}
            done = set(conn.execute(trials.update().where(
                trials.c.trial_id.in_(group), trials.c.state == TrialState.RUNNING)
                .values(state=state, datetime_complete=now).returning(trials.c.trial_id))
                .scalars())
            for trial_id, ending in group.items():
                if trial_id in done:
                    applied.append(ending)
                else:
                    log.warning("study %s trial %d was reaped as lost meanwhile",
                                self.record.name, ending[0])
        return applied

    def flush(self) -> None:
        """Write everything buffered in one transaction."""
        if not (self.values or self.user_attrs or self.endings
                or any(p.dirty for p in self.params)):
            return
        now = datetime.now(UTC).replace(tzinfo=None)  # Optuna stores naive UTC
        with self.store.engine.begin() as conn:
            for buffered in self.params:  # the pack's sampled params, before anything else
                buffered.write_params(conn)
            bulk_insert(conn, TABLES["intermediate"], self.values)
            bulk_insert(conn, TABLES["user_attrs"], self.user_attrs)
            system, values = [], []
            for number, state, value in self._ended(conn, now):
                trial_id = self.claims[number].trial._trial_id
                if state in (TrialState.COMPLETE, TrialState.PRUNED):
                    key, meta = curve_artifact_attr(self.study_id, trial_id, number)
                    system.append({"trial_id": trial_id, "key": key,
                                   "value_json": json.dumps(meta)})
                if state == TrialState.COMPLETE and value is not None:
                    stored, kind = models.TrialValueModel.value_to_stored_repr(value)
                    values.append({"trial_id": trial_id, "objective": 0, "value": stored,
                                   "value_type": kind})
                mirror = self.mirror.get(number)
                if mirror is not None:  # pruners' own notes (e.g. successive-halving rungs)
                    for key, note in self.memory._storage.get_trial(mirror).system_attrs.items():
                        system.append({"trial_id": trial_id, "key": key,
                                       "value_json": json.dumps(note)})
            bulk_insert(conn, TABLES["values"], values)
            bulk_insert(conn, TABLES["system_attrs"], system)
        ended = bool(self.endings)
        completed = [v for _, state, v in self.endings
                     if state == TrialState.COMPLETE and v is not None]
        self.values, self.user_attrs, self.endings = [], [], []
        if completed:
            minimize = self.memory.direction == optuna.study.StudyDirection.MINIMIZE
            self.store.note_best(self.record, min(completed) if minimize else max(completed))
        if ended and self.last_slot:
            self.store.mark_done_if_complete(self.record)
