"""A heartbeat for claimed trials that survives database blips.

Optuna's own heartbeat thread stops at the first storage error, after which a live trial
would be reaped as lost; this one logs the error and keeps beating, and beats a whole pack in
one transaction.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType

from lrtune.store import Store

log = logging.getLogger("lrtune.worker")


class Heartbeat:
    """``with Heartbeat(store, [trial_id, …], interval):`` beats every ``interval`` seconds."""

    def __init__(self, store: Store, trial_ids: list[int], interval: float) -> None:
        self.store = store
        self.trial_ids = list(trial_ids)
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="lrtune-heartbeat", daemon=True)

    def _beat(self) -> None:
        while True:
            try:
                self.store.record_heartbeats(self.trial_ids)
            except Exception as error:  # the database may be restarting; keep trying
                log.warning("heartbeat of %d trial(s), ids %d to %d, failed: %s",
                            len(self.trial_ids), min(self.trial_ids), max(self.trial_ids),
                            str(error).splitlines()[0])
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
