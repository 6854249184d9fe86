"""The pull worker: claim a trial, train it under a heartbeat, record it, repeat."""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from typing import Any

import sqlalchemy as sa
import torch
from optuna.storages._heartbeat import get_heartbeat_thread

from lrtune.settings import Settings
from lrtune.store import Claim, Store
from worker.device import pick_device
from worker.runner import Stopping, run_trial

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
                claim = self._connect().claim(self.only)
            except sa.exc.OperationalError as error:  # database away: back off, reconnect
                log.warning("database unavailable (%s); retrying in %.1fs",
                            str(error).splitlines()[0], idle)
                claim = None
            if claim is None:
                if self.exit_when_idle:
                    break
                self._sleep(idle)
                idle = min(idle * 2, self.settings.idle_max)
                continue
            idle = self.settings.idle_min
            self._work(claim)
            done += 1
        log.info("worker %s stopping after %d trials", self.name, done)
        return done

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < end:
            time.sleep(min(0.1, end - time.monotonic()))

    def _work(self, claim: Claim) -> None:
        store = self._connect()
        trial, name = claim.trial, claim.record.name
        log.info("study %s trial %d claimed by %s", name, trial.number, self.name)
        started = time.monotonic()

        def should_stop() -> None:
            if self.stopping:
                raise Stopping

        with get_heartbeat_thread(trial._trial_id, store.optuna_storage):
            try:
                outcome = run_trial(trial, claim.record.spec, self.device,
                                    between_epochs=should_stop)
            except Stopping:
                store.hand_back(claim, f"handed back: worker {self.name} stopping")
                log.info("study %s trial %d handed back (worker stopping)", name, trial.number)
                return
        store.finish(claim, outcome.state, outcome.value)
        value = "" if outcome.value is None else f" value={outcome.value:.6g}"
        reason = f" reason={outcome.reason}" if outcome.reason else ""
        log.info("study %s trial %d %s%s%s in %.1fs", name, trial.number, outcome.state.name,
                 value, reason, time.monotonic() - started)
