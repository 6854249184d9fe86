"""schemathesis (`st run`) against the service's own OpenAPI on a real server process: no 5xx,
and every response conforms to the schema (declared status codes, bodies, content types)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, lrtune_env, spawn, stop, wait_ready


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    env = lrtune_env(f"sqlite:///{tmp / 'fuzz.db'}", LRTUNE_MAX_TRIALS="50",
                     LRTUNE_MAX_EPOCHS="5")
    token = subprocess.run([sys.executable, "-m", "lrtune", "token", "create"], env=env,
                           capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    port = free_port()
    server = spawn(["serve", "--port", str(port)], env, tmp / "server.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, server)
        httpx.post(f"{url}/studies", json={"name": "seed", "task": "linreg", "epochs": 1,
                                           "n_trials": 2},
                   headers={"Authorization": f"Bearer {token}"}, timeout=30)
        yield url, token
    finally:
        stop(server)


def test_api_conforms_to_its_openapi(api: tuple[str, str], tmp_path: Path) -> None:
    url, token = api
    config = tmp_path / "schemathesis.toml"  # a body over LRTUNE_MAX_BODY_BYTES is a 413
    config.write_text("[checks.negative_data_rejection]\n"
                      "expected-statuses = [400, 401, 403, 404, 405, 409, 413, 422, 429]\n")
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "st"), "--config-file", str(config), "run",
         f"{url}/openapi.json",
         "--checks", "all", "--max-examples", "25", "--seed", "1",
         # Configurable limits (LRTUNE_MAX_TRIALS, …) and cross-field rules (range keys that
         # name a family's parameter) cannot be written in a static JSON schema, so a
         # schema-valid body may still earn a 422 naming the field.
         "--exclude-checks", "positive_data_acceptance",
         "-H", f"Authorization: Bearer {token}", "--report-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
        cwd=tmp_path)  # `st` keeps a crash cache in .schemathesis/ under its working directory
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
