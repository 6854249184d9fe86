"""The pull worker: claim a trial (or a pack), train it under a heartbeat, record it, repeat.

Trials come from a ``Source``: the database (the default, ``LRTUNE_DATABASE_URL``) or the
API's trial leases over HTTP (``lrtune worker --url``); the loop sees only the interface."""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from typing import Any

import torch

from lrtune.settings import Settings
from lrtune.spec import StudySpec
from lrtune.store import Store
from lrtune_worker.device import pick_device
from lrtune_worker.heartbeat import first_line
from lrtune_worker.pack import LEAVE, run_pack
from lrtune_worker.runner import Stopping, TrialOutcome, failure
from lrtune_worker.source import UNAVAILABLE, Lot, Slot, Source
from lrtune_worker.stored import StoreSource

log = logging.getLogger("lrtune.worker")


class Worker:
    """``run()`` loops until ``stop()`` (SIGTERM/SIGINT) or, with ``max_trials``, enough work.
    ``source``: where trials come from; None: the database of ``settings`` (opened at the
    first claim, or ``store`` when one is set)."""

    def __init__(self, settings: Settings, device: str | None = None,
                 studies: set[int] | None = None, max_trials: int | None = None,
                 exit_when_idle: bool = False, source: Source | None = None) -> None:
        self.settings = settings
        self.device = pick_device(device or settings.device)
        self.only = studies
        self.max_trials = max_trials
        self.exit_when_idle = exit_when_idle
        self.stopping = False
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.source = source
        self.store: Store | None = None
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)

    def stop(self, *_: Any) -> None:
        self.stopping = True

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def _source(self) -> Source:
        if self.source is None:
            if self.store is None:
                self.store = Store(self.settings)
            self.source = StoreSource(self.store, self.settings)
        return self.source

    def run(self) -> int:
        """Returns the number of trials this worker finished."""
        done = 0
        idle = self.settings.idle_min
        log.info("worker %s up on %s", self.name, self.device)
        while not self.stopping and (self.max_trials is None or done < self.max_trials):
            try:
                lot = self._source().claim(self.only, self.pack_size)
            except UNAVAILABLE as error:  # database or API away: back off, try again
                log.warning("%s unavailable (%s); retrying in %.1fs",
                            self.source.name if self.source else "database",
                            first_line(error), idle)
                lot = None
            except Exception:  # noqa: BLE001 - nothing but shutdown ends the loop
                log.exception("claiming failed; retrying in %.1fs", idle)
                lot = None
            if lot is None:
                if self.exit_when_idle:
                    break
                self._sleep(idle)
                idle = min(idle * 2, self.settings.idle_max)
                continue
            idle = self.settings.idle_min
            numbers = [s.number for s in lot.slots]
            try:
                self._work(lot)
            except UNAVAILABLE as error:
                # The trials stay RUNNING without heartbeats: they are reaped as lost, re-run.
                log.warning("study %s trials %s abandoned, %s unavailable: %s", lot.study,
                            numbers, self._source().name, first_line(error))
                self._sleep(idle)
                continue
            except Exception:  # noqa: BLE001 - e.g. the study deleted under its trials
                log.exception("study %s trials %s abandoned after an unexpected error (they "
                              "are reaped as lost and re-run if the study still exists)",
                              lot.study, numbers)
                self._sleep(idle)
                continue
            done += len(numbers)
        log.info("worker %s stopping after %d trials", self.name, done)
        return done

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.stopping:
            left = end - time.monotonic()  # read once: it must be positive when slept
            if left <= 0:
                return
            time.sleep(min(0.1, left))

    def pack_size(self, spec: StudySpec) -> int:
        """Trials to claim at once for this study: its ``pack``, or ``auto`` sized here."""
        if isinstance(spec.pack, int):
            return spec.pack
        from lrtune_worker.autopack import auto_pack

        return auto_pack(spec, self.device, self.settings.max_pack)

    def _work(self, lot: Lot) -> None:
        name = lot.study
        log.info("study %s trials %s claimed by %s", name, [s.number for s in lot.slots],
                 self.name)
        started = time.monotonic()
        ended: set[int] = set()

        def should_stop() -> None:
            if self.stopping:
                raise Stopping

        def finish(slot: Slot, outcome: TrialOutcome) -> None:
            if not lot.finish(slot, outcome):
                log.warning("study %s trial %d is no longer running (reaped as lost, or its "
                            "study deleted): dropped; a copy re-runs it", name, slot.number)
                return
            value = "" if outcome.value is None else f" value={outcome.value:.6g}"
            reason = f" reason={outcome.reason}" if outcome.reason else ""
            log.info("study %s trial %d %s%s%s in %.1fs", name, slot.number,
                     outcome.state.name, value, reason, time.monotonic() - started)

        with lot.heartbeat():
            try:
                try:
                    spec = lot.search_spec(self.device)
                except LEAVE:
                    raise
                except Exception as error:  # the task's own failure, as in a trial
                    for slot in lot.slots:
                        ended.add(slot.number)
                        finish(slot, failure(error))
                else:
                    run_pack(lot, spec, self.device, should_stop, finish, ended,
                             self.settings.compile_after, self.settings.fused_block)
                lot.flush()
            except Stopping:
                lot.flush()
                rest = [s for s in lot.slots if s.number not in ended]
                lot.hand_back(rest, f"worker {self.name} stopping")
                log.info("study %s trials %s handed back (worker stopping)", name,
                         [s.number for s in rest])
