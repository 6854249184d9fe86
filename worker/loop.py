"""The pull worker: claim a trial, train it under a heartbeat, record it, repeat."""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from typing import Any

import torch

from lrtune.errors import DatabaseUnavailable
from lrtune.ledger import PackLedger
from lrtune.settings import Settings
from lrtune.spec import StudySpec
from lrtune.store import Claim, Store, StudyRecord
from lrtune_worker.device import pick_device
from lrtune_worker.heartbeat import Heartbeat
from lrtune_worker.pack import run_pack
from lrtune_worker.runner import Stopping, TrialOutcome, failed

log = logging.getLogger("lrtune.worker")


class Worker:
    """``run()`` loops until ``stop()`` (SIGTERM/SIGINT) or, with ``max_trials``, enough work."""

    def __init__(self, settings: Settings, device: str | None = None,
                 studies: set[int] | None = None, max_trials: int | None = None,
                 exit_when_idle: bool = False) -> None:
        self.settings = settings
        self.device = pick_device(device or settings.device)
        self.only = studies
        self.max_trials = max_trials
        self.exit_when_idle = exit_when_idle
        self.stopping = False
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.store: Store | None = None
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)

    def stop(self, *_: Any) -> None:
        self.stopping = True

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def _connect(self) -> Store:
        if self.store is None:
            self.store = Store(self.settings)
        return self.store

    def run(self) -> int:
        """Returns the number of trials this worker finished."""
        done = 0
        idle = self.settings.idle_min
        log.info("worker %s up on %s", self.name, self.device)
        while not self.stopping and (self.max_trials is None or done < self.max_trials):
            try:
                claims = self._connect().claim_pack(None, self.only, self.pack_size)
            except DatabaseUnavailable as error:  # database away: back off, reconnect
                log.warning("database unavailable (%s); retrying in %.1fs",
                            str(error).splitlines()[0], idle)
                claims = []
            except Exception:  # noqa: BLE001 - nothing but shutdown ends the loop
                log.exception("claiming failed; retrying in %.1fs", idle)
                claims = []
            if not claims:
                if self.exit_when_idle:
                    break
                self._sleep(idle)
                idle = min(idle * 2, self.settings.idle_max)
                continue
            idle = self.settings.idle_min
            try:
                self._work(claims)
            except DatabaseUnavailable as error:
                # The trials stay RUNNING without heartbeats: they are reaped as lost, re-run.
                log.warning("study %s trials %s abandoned, database error: %s",
                            claims[0].record.name, [c.trial.number for c in claims],
                            str(error).splitlines()[0])
                self._sleep(idle)
                continue
            except Exception:  # noqa: BLE001 - e.g. the study deleted under its trials
                log.exception("study %s trials %s abandoned after an unexpected error (they "
                              "are reaped as lost and re-run if the study still exists)",
                              claims[0].record.name, [c.trial.number for c in claims])
                self._sleep(idle)
                continue
            done += len(claims)
        log.info("worker %s stopping after %d trials", self.name, done)
        return done

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.stopping:
            left = end - time.monotonic()  # read once: it must be positive when slept
            if left <= 0:
                return
            time.sleep(min(0.1, left))

    def pack_size(self, record: StudyRecord) -> int:
        """Trials to claim at once for this study: its ``pack``, or ``auto`` sized here."""
        pack = record.spec.pack
        if isinstance(pack, int):
            return pack
        from lrtune_worker.autopack import auto_pack

        return auto_pack(record.spec, self.device, self.settings.max_pack)

    def _search_spec(self, store: Store, record: StudyRecord) -> StudySpec:
        """The spec to sample from; runs the study's LR range test first when ``lr`` is
        "auto" and no worker has yet (racing workers keep the first one saved)."""
        if record.spec.space.lr != "auto" or record.lr_range is not None:
            return record.search_spec
        from lrtune_worker.lr_find import find_bounds

        return store.save_lr_bounds(record.id, find_bounds(record.spec, self.device)).search_spec

    def _work(self, claims: list[Claim]) -> None:
        store = self._connect()
        name = claims[0].record.name
        numbers = [c.trial.number for c in claims]
        log.info("study %s trials %s claimed by %s", name, numbers, self.name)
        started = time.monotonic()
        ended: set[int] = set()
        ledger = PackLedger(store, claims) if len(claims) > 1 else None

        def should_stop() -> None:
            if self.stopping:
                raise Stopping

        def finish(claim: Claim, outcome: TrialOutcome) -> None:
            if ledger is not None:  # written with the epoch's batch
                ledger.finish(claim.trial.number, outcome.state, outcome.value)
            elif not store.finish(claim, outcome.state, outcome.value):
                return  # reaped as lost meanwhile (logged by the store): its copy re-runs
            value = "" if outcome.value is None else f" value={outcome.value:.6g}"
            reason = f" reason={outcome.reason}" if outcome.reason else ""
            log.info("study %s trial %d %s%s%s in %.1fs", name, claim.trial.number,
                     outcome.state.name, value, reason, time.monotonic() - started)

        ids = [c.trial_id for c in claims]
        with Heartbeat(store, ids, self.settings.heartbeat_interval):
            try:
                try:
                    spec = self._search_spec(store, claims[0].record)
                except (Stopping, DatabaseUnavailable):
                    raise
                except Exception as error:  # the task's own failure, as in a trial
                    for claim in claims:
                        finish(claim, failed(claim.trial, error))
                else:
                    run_pack(claims, spec, self.device, should_stop, finish, ended, ledger,
                             self.settings.compile_after, self.settings.fused_block)
                if ledger is not None:
                    ledger.flush()
            except Stopping:
                if ledger is not None:
                    ledger.flush()
                rest = [c for c in claims if c.trial.number not in ended]
                store.hand_back(rest, f"handed back: worker {self.name} stopping")
                log.info("study %s trials %s handed back (worker stopping)", name,
                         [c.trial.number for c in rest])
