"""One study's or one trial's trouble never stops a worker: against a real ``lrtune serve
--workers 1`` on loopback, on SQLite and PostgreSQL. The worker keeps its pid throughout (the
supervisor would hide a death by restarting it), and every other study keeps its exact budget.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import optuna
import pytest

from lrtune.settings import Settings
from lrtune.store import Store, sqlalchemy_url
from tests.conftest import (
    age_trials,
    free_port,
    lrtune_env,
    pause_between_transactions,
    spawn,
    stop,
    wait_ready,
)
from tests.faults.common import assert_exact_budget

pytestmark = pytest.mark.timeout(420)
DONE: Callable[[dict], bool] = lambda s: s["status"] == "done"  # noqa: E731
RUNNING: Callable[[dict], bool] = lambda s: s["progress"]["running"] == 1  # noqa: E731
LONG = {"task": "digits-mlp", "epochs": 30, "pruner": {"name": "none"},
        "space": {"families": ["cosine"], "optimizers": ["momentum"],
                  "lr": {"low": 0.01, "high": 0.02}}}


@dataclass
class Serving:
    url: str
    db_url: str
    token: str
    proc: subprocess.Popen
    log: Path

    def create(self, name: str, **spec: object) -> int:
        r = httpx.post(f"{self.url}/studies", headers=self.auth, timeout=30,
                       json={"name": name, **spec})
        assert r.status_code == 201, r.text
        return int(r.json()["id"])

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def study(self, study_id: int) -> dict:
        r = httpx.get(f"{self.url}/studies/{study_id}", timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    def wait(self, study_id: int, until: Callable[[dict], bool], timeout: float = 300
             ) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            study = self.study(study_id)
            if until(study):
                return study
            time.sleep(0.3)
        raise TimeoutError(f"not reached: {self.study(study_id)}\n"
                           f"{self.log.read_text()[-3000:]}")

    def worker_pid(self) -> int:
        tasks = Path(f"/proc/{self.proc.pid}/task").iterdir()  # a restart is the watcher's
        pids = [int(p) for task in tasks for p in (task / "children").read_text().split()]
        assert len(pids) == 1, pids
        return pids[0]

    def exact(self, study_id: int) -> None:
        store = Store(Settings(database_url=self.db_url), migrate=False)
        assert_exact_budget(store, store.get_study(study_id))


@pytest.fixture
def serving(db_url: str, tmp_path: Path) -> Iterator[Serving]:
    env = lrtune_env(db_url)
    subprocess.run([sys.executable, "-m", "lrtune", "migrate"], env=env, check=True,
                   capture_output=True, timeout=120)
    token = subprocess.run([sys.executable, "-m", "lrtune", "token", "create", "--name", "me"],
                           env=env, check=True, capture_output=True, text=True,
                           timeout=120).stdout.strip()
    port = free_port()
    log = tmp_path / "server.log"
    proc = spawn(["serve", "--port", str(port), "--workers", "1"], env, log)
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc)
        yield Serving(f"http://127.0.0.1:{port}", db_url, token, proc, log)
        assert proc.poll() is None, log.read_text()[-3000:]
    finally:
        stop(proc, timeout=60)


def test_a_study_removed_behind_lrtunes_back_fails_alone(serving: Serving) -> None:
    worker = serving.worker_pid()
    gone = serving.create("gone", task="linreg", epochs=3, n_trials=500)
    serving.wait(gone, lambda s: s["progress"]["n_done"] >= 2)
    storage = optuna.storages.RDBStorage(sqlalchemy_url(serving.db_url))
    while "gone" in [s.study_name for s in optuna.get_all_study_summaries(storage)]:
        # not through lrtune; Optuna rolls its delete back, silently, when a worker adds a
        # trial meanwhile, so it is tried again
        optuna.delete_study(study_name="gone", storage=storage)
    listed = httpx.get(f"{serving.url}/studies", timeout=30)
    assert listed.status_code == 200
    assert {s["name"]: s["status"] for s in listed.json()["items"]}["gone"] == "failed"
    assert httpx.get(f"{serving.url}/studies/{gone}/trials", timeout=30).status_code == 404
    after = serving.create("after", task="linreg", epochs=2, n_trials=6)
    serving.wait(after, DONE)
    serving.wait(gone, lambda s: s["status"] == "failed")
    assert "Optuna study" in serving.study(gone)["reason"]
    serving.exact(after)
    assert serving.worker_pid() == worker


def test_a_worker_outlives_its_trial_reaped_under_it(serving: Serving) -> None:
    """Paused past the heartbeat grace, its trial reaped as lost and re-queued: on waking
    the worker drops the trial, runs the copy, and the budget stays exact."""
    worker = serving.worker_pid()
    study = serving.create("paused", n_trials=2, **LONG)
    serving.wait(study, RUNNING)
    store = Store(Settings(database_url=serving.db_url), migrate=False)
    record = store.get_study(study)
    pause_between_transactions(worker, serving.db_url)
    try:
        age_trials(store)  # silent for an hour, as far as the reaper can tell
        assert store.reap(record) == 1  # what any claimer does under the study's lock
    finally:
        subprocess.run(["kill", "-CONT", str(worker)], check=True)
    serving.wait(study, DONE)
    serving.exact(study)
    assert serving.worker_pid() == worker
    assert "no longer running" in serving.log.read_text()


def test_the_owner_deletes_a_study_mid_trial(serving: Serving) -> None:
    worker = serving.worker_pid()
    study = serving.create("deleted", n_trials=3, **LONG)
    serving.wait(study, RUNNING)
    r = httpx.delete(f"{serving.url}/studies/{study}", headers=serving.auth, timeout=30)
    assert r.status_code == 204
    after = serving.create("next", task="linreg", epochs=2, n_trials=4)
    serving.wait(after, DONE)
    serving.exact(after)
    assert serving.worker_pid() == worker


def test_a_killed_worker_is_replaced(serving: Serving) -> None:
    worker = serving.worker_pid()
    study = serving.create("killed", task="linreg", epochs=2, n_trials=8)
    subprocess.run(["kill", "-KILL", str(worker)], check=True)
    end = time.monotonic() + 60
    while time.monotonic() < end:
        try:
            replaced = serving.worker_pid()
        except (AssertionError, FileNotFoundError):
            replaced = worker
        if replaced != worker and httpx.get(f"{serving.url}/readyz",
                                            timeout=30).status_code == 200:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(serving.log.read_text()[-3000:])
    serving.wait(study, DONE)
    serving.exact(study)
    text = serving.log.read_text()
    assert f"exited with code -{signal.SIGKILL.value}" in text and "restarted" in text
