"""Two API processes and three workers on one database; 300 concurrent requests."""

from __future__ import annotations

import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.conftest import (
    CONVERGING_LR,
    MakeStore,
    free_port,
    lrtune_env,
    spawn,
    stop,
    wait_ready,
)
from tests.faults.common import assert_exact_budget, wait_status

REQUESTS = 300


def test_concurrent_requests_while_trials_run(db_url: str, make_store: MakeStore,
        tmp_path: Path) -> None:
    env = lrtune_env(db_url, LRTUNE_MAX_RUNNING_STUDIES="100")  # 31 studies of one principal
    token = subprocess.run([sys.executable, "-m", "lrtune", "token", "create"], env=env,
                           capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    auth = {"Authorization": f"Bearer {token}"}
    ports = [free_port(), free_port()]
    apis = [spawn(["serve", "--port", str(p)], env, tmp_path / f"api{p}.log") for p in ports]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    workers = []
    try:
        for url, api in zip(urls, apis, strict=True):
            wait_ready(url, api)
        r = httpx.post(f"{urls[0]}/studies", headers=auth, timeout=30, json={
            "name": "busy", "task": "linreg", "epochs": 6, "n_trials": 30})
        sid = r.json()["id"]
        workers = [spawn(["worker"], env, tmp_path / f"w{i}.log") for i in range(3)]
        rng = random.Random(1)

        def one(i: int) -> int:
            url = rng.choice(urls)
            kind = i % 10
            with httpx.Client(base_url=url, timeout=60) as c:
                if kind == 0:
                    return c.post("/studies", headers=auth, json={
                        "name": f"extra-{i}", "task": "linreg", "epochs": 1, "n_trials": 1,
                        "space": {"lr": CONVERGING_LR}}).status_code
                if kind == 1:
                    return c.post("/studies", headers=auth, json={
                        "name": f"bad-{i}", "task": "linreg", "n_trials": -1}).status_code
                path = [f"/studies/{sid}", f"/studies/{sid}/trials", "/studies",
                        f"/studies/{sid}/best", "/schedules/cosine/curve", "/tasks",
                        "/metrics", f"/studies/{sid}/trials/0"][kind - 2]
                return c.get(path).status_code

        with ThreadPoolExecutor(max_workers=30) as pool:
            codes = list(pool.map(one, range(REQUESTS)))
        assert len(codes) == REQUESTS
        assert not [c for c in codes if c >= 500], codes
        assert codes.count(201) == REQUESTS // 10 and codes.count(422) == REQUESTS // 10
        store = make_store(heartbeat_interval=10, heartbeat_grace=60)
        for record in store.list_studies(limit=1000)[0]:
            assert wait_status(store, record, 300) == "done", store.get_study(record.id)
            assert_exact_budget(store, record)
    finally:
        stop(*workers, *apis)
