"""``lrtune serve --workers N`` restarts a worker that exits; /readyz says not ready meanwhile."""

from __future__ import annotations

import sys
import time

from fastapi.testclient import TestClient

from lrtune.store import Store
from lrtune_service.app import create_app
from lrtune_service.workers import WorkerPool

SHORT_LIVED = [sys.executable, "-c", "import sys; sys.exit(3)"]
LONG_LIVED = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_an_exited_worker_is_restarted_with_backoff() -> None:
    pool = WorkerPool(1, SHORT_LIVED)
    pool.start()
    try:
        slot = pool.slots[0]
        end = time.monotonic() + 30
        while slot.restarts < 2 and time.monotonic() < end:
            time.sleep(0.1)
        assert slot.restarts >= 2 and slot.backoff >= 2  # 1 s, then 2 s: doubling
        slot.proc.wait()  # type: ignore[union-attr]
        assert not pool.healthy()
    finally:
        pool.stop(grace=5)


def test_readyz_reports_the_local_workers(store: Store) -> None:
    app = create_app(store.settings, store)
    with TestClient(app) as client:
        assert client.get("/readyz").status_code == 200  # no local workers
        app.state.workers = dead = WorkerPool(1, SHORT_LIVED)
        dead.start()
        dead.slots[0].proc.wait()  # type: ignore[union-attr]
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["error"]["message"] == "not ready"
        dead.stop(grace=5)
        app.state.workers = alive = WorkerPool(1, LONG_LIVED)
        alive.start()
        try:
            assert client.get("/readyz").json() == {"status": "ready"}
        finally:
            alive.stop(grace=5)
