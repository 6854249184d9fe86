"""Every connection to the database cut mid-study: API and workers recover by themselves."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import psycopg

from lrtune.settings import Settings
from lrtune.spec import StudySpec
from lrtune.store import Store
from tests.conftest import PG_ADMIN, _pg_database, free_port, lrtune_env, spawn, stop, wait_ready
from tests.faults.common import assert_exact_budget, wait_status

CUTS = 3


def cut_connections(database: str) -> int:
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        rows = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                             "WHERE datname = %s AND pid <> pg_backend_pid()",
                             (database,)).fetchall()
    return len(rows)


def test_connections_cut_mid_study(tmp_path: Path) -> None:
    gen = _pg_database()
    db_url = next(gen)
    try:
        database = db_url.rsplit("/", 1)[1]
        store = Store(Settings(database_url=db_url))
        record = store.create_study(StudySpec(
            name="cuts", task="digits-mlp", epochs=12, n_trials=16, pruner={"name": "none"},
            space={"families": ["cosine", "step"], "optimizers": ["momentum"]}), "me")
        env = lrtune_env(db_url, LRTUNE_MAX_RETRIES="10")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        api = spawn(["serve", "--port", str(port)], env, tmp_path / "api.log")
        wait_ready(url, api)
        workers = [spawn(["worker"], env, tmp_path / f"w{i}.log") for i in range(2)]
        statuses: list[int] = []
        polling = threading.Event()

        def poll() -> None:
            while not polling.is_set():
                try:
                    statuses.append(httpx.get(f"{url}/studies/{record.id}", timeout=10)
                                    .status_code)
                except httpx.HTTPError:
                    statuses.append(0)
                time.sleep(0.05)

        poller = threading.Thread(target=poll)
        poller.start()
        cut = 0
        try:
            while store.trial_counts(record)["COMPLETE"] < 2:
                time.sleep(0.3)
            for _ in range(CUTS):
                cut += cut_connections(database)
                time.sleep(2.0)
            assert wait_status(store, record, 300) == "done"
            after = [httpx.get(f"{url}/studies/{record.id}", timeout=10).status_code
                     for _ in range(5)]
        finally:
            polling.set()
            poller.join()
            stop(*workers, api)
            for log in sorted(tmp_path.glob("*.log")):
                print(f"--- {log.name}\n{log.read_text()[-1500:]}")
        assert cut >= CUTS * 3  # API + workers had connections to lose
        assert after == [200] * 5
        assert 500 not in statuses and 0 not in statuses, statuses
        assert all(w.returncode == 0 for w in workers)
        assert_exact_budget(store, record)
        print(f"connections cut={cut}; requests={len(statuses)}, "
              f"503={statuses.count(503)}, 200={statuses.count(200)}")
        store.engine.dispose()
        store.optuna_storage.engine.dispose()
    finally:
        gen.close()
