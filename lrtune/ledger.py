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
import warnings
from typing import Any

import optuna
from optuna.trial import TrialState

from lrtune import optuna_internals as internals
from lrtune.store import Claim, Ending, Store
from lrtune.study import make_pruner


class PackLedger:
    def __init__(self, store: Store, claims: list[Claim]) -> None:
        self.store = store
        self.claims = {c.trial.number: c for c in claims}
        record = claims[0].record
        self.record = record
        self.last_slot = any(c.last_slot for c in claims)
        self.params = list({id(c.params): c.params for c in claims if c.params}.values())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.memory = optuna.create_study(
                study_name=record.name, direction=claims[0].study.direction,
                pruner=make_pruner(record.spec.pruner, record.spec.epochs))
        self.memory_storage = internals.storage_of(self.memory)
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
        fresh = self.store.finished_trials(self.record, self.seen | set(self.claims))
        if fresh:
            self.memory.add_trials(fresh)
            self.seen.update(t.number for t in fresh)

    def report(self, number: int, epoch: int, value: float) -> None:
        self._refresh(epoch)
        stored, kind = internals.stored_intermediate(value)
        self.values.append({"trial_id": self.claims[number].trial_id, "step": epoch,
                            "intermediate_value": stored, "intermediate_value_type": kind})
        if number not in self.mirror:
            self.mirror[number] = self.memory_storage.create_new_trial(
                internals.study_id(self.memory))
        self.memory_storage.set_trial_intermediate_value(self.mirror[number], epoch, value)

    def should_prune(self, number: int) -> bool:
        trial_id = self.mirror.get(number)
        if trial_id is None:
            return False
        frozen = self.memory_storage.get_trial(trial_id)
        return bool(self.memory.pruner.prune(self.memory, frozen))

    # -- buffered writes ------------------------------------------------------------------------
    def set_user_attr(self, number: int, key: str, value: Any) -> None:
        self.user_attrs.append({"trial_id": self.claims[number].trial_id, "key": key,
                                "value_json": json.dumps(value)})

    def finish(self, number: int, state: TrialState, value: float | None) -> None:
        self.endings.append((number, state, value))

    def flush(self) -> None:
        """Write everything buffered in one transaction."""
        if not (self.values or self.user_attrs or self.endings
                or any(p.dirty for p in self.params)):
            return
        endings = []
        for number, state, value in self.endings:
            mirror = self.mirror.get(number)  # pruners' own notes (e.g. successive-halving rungs)
            notes = (self.memory_storage.get_trial(mirror).system_attrs
                     if mirror is not None else {})
            endings.append(Ending(self.claims[number].trial_id, number, state, value, notes))
        self.store.write_trials(self.record, params=self.params, intermediate=self.values,
                                user_attrs=self.user_attrs, endings=endings,
                                last_slot=self.last_slot)
        self.values, self.user_attrs, self.endings = [], [], []
