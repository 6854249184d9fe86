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
from datetime import datetime
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.distributions import BaseDistribution, distribution_to_json
from optuna.trial import FrozenTrial, TrialState

from lrtune import optuna_internals as internals
from lrtune.store.trials import bulk_insert


class PackStorage:
    """The study's storage, with the pack's trials and their parameters held in memory."""

    def __init__(self, inner: optuna.storages.BaseStorage, study_id: int,
                 created: list[tuple[int, int]]) -> None:
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
            return self.inner.get_all_trials(study_id, deepcopy=deepcopy, states=states)
        with self._lock:
            if self._study_view is None:
                self._study_view = [self.local.get(internals.trial_id(t), t) for t in
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
        bulk_insert(conn, internals.PARAMS, pending)
        bulk_insert(conn, internals.SYSTEM_ATTRS, notes)
