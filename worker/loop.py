"""The pull worker: claim a trial, train it under a heartbeat, record it, repeat."""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from typing import Any

import optuna
import torch

from lrtune.settings import Settings
from lrtune.store import Claim, Store
from worker.device import pick_device
from worker.heartbeat import Heartbeat
from worker.runner import DATABASE_ERRORS, Stopping, run_trial

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
            except DATABASE_ERRORS as error:  # database away: back off, reconnect
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
            try:
                self._work(claim)
            except DATABASE_ERRORS as error:
                # The trial stays RUNNING without heartbeats: it is reaped as lost and re-run.
                log.warning("study %s trial %d abandoned, database error: %s", claim.record.name,
                            claim.trial.number, str(error).splitlines()[0])
                self._sleep(idle)
                continue
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

        with Heartbeat(store.optuna_storage, [trial._trial_id], self.settings.heartbeat_interval):
            try:
                outcome = run_trial(trial, claim.record.spec, self.device,
                                    between_epochs=should_stop)
            except Stopping:
                store.hand_back(claim, f"handed back: worker {self.name} stopping")
                log.info("study %s trial %d handed back (worker stopping)", name, trial.number)
                return
        try:
            store.finish(claim, outcome.state, outcome.value)
        except optuna.exceptions.UpdateFinishedTrialError:
            log.warning("study %s trial %d was reaped as lost meanwhile; its copy re-runs",
                        name, trial.number)
            return
        value = "" if outcome.value is None else f" value={outcome.value:.6g}"
        reason = f" reason={outcome.reason}" if outcome.reason else ""
        log.info("study %s trial %d %s%s%s in %.1fs", name, trial.number, outcome.state.name,
                 value, reason, time.monotonic() - started)
