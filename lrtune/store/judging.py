"""Pruning decided on the server, from the database, so every API replica decides alike.

A lease client reports an epoch; the study's pruner judges each reported trial against the
study's history as the database holds it. The pruner sees the study through ``JudgedView``:
the study's finished trials, kept per process and topped up with those finished since (a
finished trial never changes), and its running trials read afresh. What a pruner writes (the
successive-halving rungs) goes to the database.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Container, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from lrtune import optuna_internals as internals
from lrtune.store.studies import StudyRecord
from lrtune.study import make_pruner

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
FEW = 8  # trials of one report read one by one; more: the study's running trials in one read
Finished = Callable[[StudyRecord, set[int], int], list[FrozenTrial]]
Running = Callable[[StudyRecord], list[FrozenTrial]]
AllFinished = Callable[[StudyRecord], list[FrozenTrial]]


class JudgedView:
    """A study's storage for its pruner: finished trials from the cache, running ones fresh,
    everything else (and every write) the storage itself."""

    def __init__(self, inner: optuna.storages.BaseStorage, study_id: int,
                 finished: list[FrozenTrial], running: Callable[[], list[FrozenTrial]]) -> None:
        self.inner, self.study_id = inner, study_id
        self.finished, self.running = finished, running
        self._running: list[FrozenTrial] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        if study_id != self.study_id:
            return self.inner.get_all_trials(study_id, deepcopy=deepcopy, states=states)
        trials = [t for t in self.finished if states is None or t.state in states]
        if states is None or TrialState.RUNNING in states:
            if self._running is None:
                self._running = self.running()
            trials += self._running
        return sorted(trials, key=lambda t: t.number)


class PruneJudge:
    """``prune(record, study, trials)``: the numbers of ``trials`` the study's pruner prunes.

    Keeps the finished trials of the ``studies`` studies judged last (least recently judged
    dropped first); a study's history is fetched by one request at a time, the first time in
    bulk."""

    def __init__(self, finished: Finished, running: Running, all_finished: AllFinished,
                 trials: Callable[[Sequence[int]], list[FrozenTrial]], studies: int = 16
                 ) -> None:
        self._finished, self._running, self._all_finished = finished, running, all_finished
        self._trials = trials
        self._cache: OrderedDict[int, tuple[set[int], list[FrozenTrial]]] = OrderedDict()
        self._locks: dict[int, threading.Lock] = {}
        self._lock = threading.Lock()
        self.studies = studies

    def _history(self, record: StudyRecord, optuna_id: int) -> list[FrozenTrial]:
        with self._lock:
            study_lock = self._locks.setdefault(record.id, threading.Lock())
        with study_lock:
            with self._lock:
                known, trials = self._cache.get(record.id, (set(), []))
            new = self._finished(record, known, optuna_id) if known else \
                self._all_finished(record)
            new = [t for t in new if t.number not in known]
            trials = trials + new
            with self._lock:
                self._cache[record.id] = (known | {t.number for t in new}, trials)
                self._cache.move_to_end(record.id)
                while len(self._cache) > self.studies:
                    dropped, _ = self._cache.popitem(last=False)
                    self._locks.pop(dropped, None)
            return trials

    def forget(self, study_id: int) -> None:
        with self._lock:
            self._cache.pop(study_id, None)

    def prune(self, record: StudyRecord, study: optuna.Study, trial_ids: Sequence[int]
              ) -> list[int]:
        """The numbers of the trials ``trial_ids`` (running, each with its latest report) the
        study's pruner prunes. Reads nothing for a study without a pruner; a few trials in one
        read, a pack's with the study's running trials in one read; the running trials only
        when the pruner asks for them (the percentile and median pruners never do)."""
        pruner = make_pruner(record.spec.pruner, record.spec.epochs)
        if isinstance(pruner, optuna.pruners.NopPruner) or not trial_ids:
            return []
        running: list[FrozenTrial] | None = None
        if len(trial_ids) > FEW:
            running = self._running(record)
            wanted = set(trial_ids)
            trials = [t for t in running if internals.trial_id(t) in wanted]
        else:
            trials = self._trials(trial_ids)
        optuna_id = internals.study_id(study)
        view = JudgedView(internals.storage_of(study), optuna_id,
                          self._history(record, optuna_id),
                          (lambda: running) if running is not None
                          else (lambda: self._running(record)))
        judged = internals.study_view(study, view)
        judged.pruner = pruner
        return [t.number for t in trials if pruner.prune(judged, t)]
