"""The service image has no torch: a plugin task that publishes its torch-free TaskInfo is
described, validated and shown; one that does not gets a clear 422, never a 500."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import free_port, lrtune_env, spawn, stop, wait_ready
from tests.faults.common import PLUGINS


def test_a_plugin_task_in_the_torch_free_service(db_url: str, tmp_path: Path) -> None:
    no_torch = tmp_path / "no_torch"
    (no_torch / "torch").mkdir(parents=True)
    (no_torch / "torch" / "__init__.py").write_text(
        "raise ImportError('torch is not in the service image')\n")
    env = lrtune_env(db_url, PYTHONPATH=f"{no_torch}:{PLUGINS}")
    token = subprocess.run([sys.executable, "-m", "lrtune", "token", "create"], env=env,
                           capture_output=True, text=True, check=True, timeout=120
                           ).stdout.strip()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = spawn(["serve", "--port", str(port)], env, tmp_path / "serve.log")
    auth = {"Authorization": f"Bearer {token}"}
    try:
        wait_ready(url, server)
        tasks = {t["name"]: t for t in httpx.get(f"{url}/tasks", timeout=30).json()}
        assert tasks["fault-nan"]["metrics"] == {"val_loss": "minimize"}
        assert "lrtune.task_info" in tasks["fault-oom"]["error"]  # trainable only
        r = httpx.post(f"{url}/studies", headers=auth, timeout=30,
                       json={"name": "plugin", "task": "fault-nan", "n_trials": 2})
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        assert httpx.get(f"{url}/studies/{sid}", timeout=30).status_code == 200
        assert httpx.get(f"{url}/studies", params={"limit": 100}, timeout=30
                         ).status_code == 200
        refused = httpx.post(f"{url}/studies", headers=auth, timeout=30,
                             json={"name": "oom", "task": "fault-oom"})
        assert refused.status_code == 422 and refused.json()["error"]["field"] == "task"
        assert "lrtune.task_info" in refused.json()["error"]["message"]
    finally:
        stop(server)
    assert "Traceback" not in (tmp_path / "serve.log").read_text()
