"""``lrtune serve --workers N``: N local worker processes, each restarted when it exits.

A worker that dies is logged with its exit code and started again after a backoff that
doubles up to a minute (and starts over once a worker has lived a minute). ``/readyz`` says
not ready while a slot has no live worker. Workers are started with ``python -P`` so a user's
own ``worker.py`` in the current directory never shadows lrtune's, and without ``LRTUNE_URL``:
they share the API's database (a shell that set ``LRTUNE_URL`` for the CLI would otherwise make
them workers over HTTP, ``lrtune worker --url``).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

log = logging.getLogger("lrtune.service")
COMMAND = [sys.executable, "-P", "-m", "lrtune", "worker"]
MAX_BACKOFF = 60.0  # seconds
STEADY = 60.0  # seconds alive after which a worker's backoff starts over


@dataclass
class Slot:
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff: float = 1.0
    restart_at: float = 0.0
    restarts: int = field(default=0)


class WorkerPool:
    def __init__(self, n: int, command: list[str] | None = None) -> None:
        self.command = command or COMMAND
        self.slots = [Slot() for _ in range(n)]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="lrtune-workers",
                                        daemon=True)

    def start(self) -> None:
        for slot in self.slots:
            self._spawn(slot)
        if self.slots:
            self._thread.start()

    def _spawn(self, slot: Slot) -> None:
        env = {k: v for k, v in os.environ.items() if k != "LRTUNE_URL"}
        slot.proc = subprocess.Popen(self.command, env=env)
        slot.started = time.monotonic()

    def check(self) -> None:
        """Restart each worker that exited, once its backoff has passed."""
        with self._lock:
            for i, slot in enumerate(self.slots):
                if self._stop.is_set() or slot.proc is None:
                    continue
                code = slot.proc.poll()
                if code is None:
                    if time.monotonic() - slot.started > STEADY:
                        slot.backoff = 1.0
                    continue
                now = time.monotonic()
                if slot.restart_at == 0.0:
                    slot.restart_at = now + slot.backoff
                    log.warning("local worker %d (pid %d) exited with code %s; restarting "
                                "in %.0f s", i, slot.proc.pid, code, slot.backoff)
                    slot.backoff = min(slot.backoff * 2, MAX_BACKOFF)
                elif now >= slot.restart_at:
                    slot.restart_at = 0.0
                    slot.restarts += 1
                    self._spawn(slot)
                    log.info("local worker %d restarted (pid %d)", i, slot.proc.pid)

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.check()
            except OSError:  # e.g. out of processes: try again on the next round
                log.exception("restarting a local worker failed")

    def healthy(self) -> bool:
        """Every slot has a live worker."""
        return all(slot.proc is not None and slot.proc.poll() is None for slot in self.slots)

    def stop(self, grace: float) -> None:
        """SIGTERM every worker (each hands back its trials), SIGKILL after ``grace`` s."""
        self._stop.set()
        with self._lock:
            procs = [slot.proc for slot in self.slots if slot.proc is not None]
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + grace
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
