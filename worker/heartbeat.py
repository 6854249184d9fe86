"""Heartbeats for claimed trials, in a thread while they train.

Optuna's own heartbeat thread stops at the first storage error, after which a live trial
would be reaped as lost; these log the error and keep beating. ``Heartbeat`` beats a pack in
the database in one transaction; ``lrtune_worker.remote`` beats a lease over HTTP.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType

from lrtune.store import Store

log = logging.getLogger("lrtune.worker")


class Beating:
    """``with``: calls ``beat()`` every ``interval`` seconds (the first at once, or after an
    interval with ``first_at_once=False``) until the block ends or ``beat()`` returns False.
    An error of one beat is logged by ``failed`` and the beating goes on."""

    def __init__(self, interval: float, first_at_once: bool = True) -> None:
        self.interval = interval
        self.first_at_once = first_at_once
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lrtune-heartbeat", daemon=True)

    def beat(self) -> bool:
        raise NotImplementedError

    def failed(self, error: Exception) -> None:
        log.warning("heartbeat failed: %s", first_line(error))

    def _run(self) -> None:
        if not self.first_at_once and self._stop.wait(self.interval):
            return
        while True:
            try:
                if not self.beat():
                    return
            except Exception as error:  # the database or API may be restarting; keep trying
                self.failed(error)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> Beating:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()


class Heartbeat(Beating):
    """``with Heartbeat(store, [trial_id, …], interval):`` beats every ``interval`` seconds."""

    def __init__(self, store: Store, trial_ids: list[int], interval: float) -> None:
        super().__init__(interval)
        self.store = store
        self.trial_ids = list(trial_ids)

    def beat(self) -> bool:
        self.store.record_heartbeats(self.trial_ids)
        return True

    def failed(self, error: Exception) -> None:
        log.warning("heartbeat of %d trial(s), ids %d to %d, failed: %s",
                    len(self.trial_ids), min(self.trial_ids), max(self.trial_ids),
                    first_line(error))


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type when it has none)."""
    text = str(error)
    return text.splitlines()[0] if text.strip() else type(error).__name__
