"""Trials from the database (``LRTUNE_DATABASE_URL``): the store's side of ``Source``.

A single trial is reported and ended through Optuna's own calls, as ``study.optimize`` would;
a pack through a ``PackLedger`` (one transaction per epoch, pruning decided in memory)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import optuna
import torch

from lrtune.ledger import PackLedger
from lrtune.settings import Settings
from lrtune.space import TrialConfig
from lrtune.spec import StudySpec
from lrtune.store import Claim, Store
from lrtune_worker.heartbeat import Heartbeat
from lrtune_worker.integrations import NO_LOG, TrialLog
from lrtune_worker.runner import (
    LOST_MEANWHILE,
    OptunaReporter,
    SetAttr,
    TrialOutcome,
    prepare,
    record,
    trial_seed,
)
from lrtune_worker.source import Sizer, Slot
from lrtune_worker.tasks import Task
from lrtune_worker.train import Reporter


class LedgerReporter:
    """Reports one packed trial through the pack's ledger (batched writes, in-memory pruning),
    and to its ``log`` (W&B, when enabled)."""

    def __init__(self, ledger: PackLedger, number: int,
                 between_epochs: Callable[[], None], log: TrialLog = NO_LOG) -> None:
        self.ledger, self.number, self.between_epochs = ledger, number, between_epochs
        self.log = log

    def report(self, epoch: int, value: float, lr: float, metrics: dict[str, float]) -> None:
        self.ledger.report(self.number, epoch, value)
        self.log.epoch(epoch, value, lr, metrics)
        self.between_epochs()

    def should_prune(self) -> bool:
        return self.ledger.should_prune(self.number)


class StoreLot:
    """Claimed trials of one study, recorded in the store: one through Optuna's calls, more
    through a ``PackLedger``."""

    def __init__(self, store: Store, claims: list[Claim], heartbeat_interval: float) -> None:
        self.store, self.interval = store, heartbeat_interval
        self.claims = {c.trial.number: c for c in claims}
        self.record = claims[0].record
        self.study, self.spec = self.record.name, self.record.spec
        self.slots = [Slot(c.trial.number, trial_seed(self.spec, c.trial), rung=c.rung)
                      for c in claims]
        self.ledger = PackLedger(store, claims) if len(claims) > 1 else None

    def search_spec(self, device: torch.device) -> StudySpec:
        """Runs the study's LR range test first when ``lr`` is "auto" and no worker has yet
        (racing workers keep the first one saved)."""
        record = self.record
        if record.spec.space.lr != "auto" or record.lr_range is not None:
            return record.search_spec
        from lrtune_worker.lr_find import find_bounds

        return self.store.save_lr_bounds(record.id,
                                         find_bounds(record.spec, device)).search_spec

    def heartbeat(self) -> AbstractContextManager[object]:
        return Heartbeat(self.store, [c.trial_id for c in self.claims.values()], self.interval)

    def _attrs(self, number: int) -> SetAttr:
        if self.ledger is None:
            return self.claims[number].trial.set_user_attr
        ledger = self.ledger
        return lambda key, value: ledger.set_user_attr(number, key, value)

    def configure(self, slot: Slot, spec: StudySpec, task: Task) -> TrialConfig:
        trial = self.claims[slot.number].trial
        config = prepare(trial, spec, task, self._attrs(slot.number))
        slot.params = dict(trial.params)
        return config

    def reporter(self, slot: Slot, between_epochs: Callable[[], None], log: TrialLog
                 ) -> Reporter:
        if self.ledger is None:
            return OptunaReporter(self.claims[slot.number].trial, between_epochs, log)
        return LedgerReporter(self.ledger, slot.number, between_epochs, log)

    def reports_done(self) -> None:
        pass  # the ledger prunes in memory: it writes the epoch once, at flush

    def flush(self) -> None:
        if self.ledger is not None:
            self.ledger.flush()

    def finish(self, slot: Slot, outcome: TrialOutcome) -> bool:
        if outcome.reason == LOST_MEANWHILE:
            return False
        if self.ledger is not None:  # written with the epoch's batch
            record(self._attrs(slot.number), outcome)
            self.ledger.finish(slot.number, outcome.state, outcome.value)
            return True
        claim = self.claims[slot.number]
        try:
            record(claim.trial.set_user_attr, outcome)
        except (optuna.exceptions.UpdateFinishedTrialError, KeyError):
            return False  # reaped as lost meanwhile: its copy re-runs
        return self.store.finish(claim, outcome.state, outcome.value)

    def hand_back(self, slots: list[Slot], why: str) -> None:
        self.store.hand_back([self.claims[s.number] for s in slots], f"handed back: {why}")


class StoreSource:
    """Claims from the database through the store (``LRTUNE_DATABASE_URL``)."""

    name = "database"

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store, self.settings = store, settings

    def claim(self, only: set[int] | None, sizer: Sizer) -> StoreLot | None:
        claims = self.store.claim_pack(None, only, lambda record: sizer(record.spec))
        return StoreLot(self.store, claims, self.settings.heartbeat_interval) \
            if claims else None
