"""Dockerfile and docker-compose.yml, checked without a Docker engine.

hadolint lints the Dockerfile; the real Compose v2 binary parses the compose file; the smoke
test runs each compose service's own command as a local process against local PostgreSQL.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from tests.conftest import ROOT, _pg_database, free_port, spawn, stop, wait_ready

BIN = Path(sys.executable).parent


def compose_config(*args: str) -> dict:
    out = subprocess.run([str(BIN / "docker-compose"), "--project-directory", str(ROOT),
                          "-f", str(ROOT / "docker-compose.yml"), *args, "config",
                          "--format", "json"], capture_output=True, text=True, check=True,
                         timeout=60)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_hadolint_is_clean() -> None:
    proc = subprocess.run([str(BIN / "hadolint"), str(ROOT / "Dockerfile")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ignores = [line for line in (ROOT / "Dockerfile").read_text().splitlines()
               if "hadolint ignore" in line]
    assert not ignores


def test_dockerfile_targets() -> None:
    text = (ROOT / "Dockerfile").read_text()
    for needle in ("AS service", "AS worker", "HEALTHCHECK", "USER 10001", "TORCH_INDEX",
                   "ARG PYTHON_IMAGE=python:3.11"):
        assert needle in text
    service = text.split("AS service", 1)[1].split("AS worker", 1)[0]
    assert "torch" not in service


@pytest.mark.parametrize("env_file", [None, ".env.example"])
def test_compose_file_parses(env_file: str | None) -> None:
    args = ["--env-file", str(ROOT / env_file)] if env_file else []
    subprocess.run([str(BIN / "docker-compose"), "--project-directory", str(ROOT), "-f",
                    str(ROOT / "docker-compose.yml"), *args, "config", "--quiet"], check=True,
                   timeout=60)


def test_compose_structure() -> None:
    cfg = compose_config("--profile", "gpu")
    services = cfg["services"]
    assert set(services) == {"postgres", "migrate", "api", "dashboard", "worker", "worker-gpu"}
    assert services["postgres"]["image"].startswith("postgres:15")
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert any(v["target"] == "/var/lib/postgresql/data" and v["source"] == "pgdata"
               for v in services["postgres"]["volumes"])
    assert "pgdata" in cfg["volumes"]
    assert services["migrate"]["command"] == ["lrtune", "migrate"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "dashboard", "worker", "worker-gpu"):
        deps = services[name]["depends_on"]
        assert deps["postgres"]["condition"] == "service_healthy"
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert services[name]["environment"]["LRTUNE_DATABASE_URL"].startswith(
            "postgresql+psycopg://")
    assert services["api"]["ports"][0]["target"] == 8000
    assert services["dashboard"]["ports"][0]["target"] == 8080
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    for name in ("migrate", "api", "dashboard"):
        assert services[name]["image"].startswith("lrtune-service:")
    assert services["worker"]["image"].startswith("lrtune-worker:")
    assert services["migrate"]["build"]["target"] == "service"
    assert services["worker"]["build"]["target"] == "worker"
    assert "ports" not in services["worker"]
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    device = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert "cu" in gpu["build"]["args"]["TORCH_INDEX"]
    assert "worker-gpu" not in compose_config()["services"]  # only with --profile gpu


def _local(url: str, database_url: str) -> str:
    """The compose database URL pointed at the local PostgreSQL test database."""
    parts = urlsplit(url)
    assert parts.hostname == "postgres"
    local = urlsplit(database_url)
    return urlunsplit((parts.scheme, f"postgres@127.0.0.1:{local.port}", local.path, "", ""))


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from _pg_database()


def test_smoke_each_compose_service_runs_locally(pg_url: str, tmp_path: Path) -> None:
    services = compose_config()["services"]
    no_torch = tmp_path / "no_torch"
    (no_torch / "torch").mkdir(parents=True)
    (no_torch / "torch" / "__init__.py").write_text(
        "raise ImportError('torch is not in the service image')\n")
    ports = {8000: free_port(), 8080: free_port()}

    def prepare(name: str) -> tuple[list[str], dict[str, str]]:
        svc = services[name]
        env = {k: str(v) for k, v in svc["environment"].items()}
        env["LRTUNE_DATABASE_URL"] = _local(env["LRTUNE_DATABASE_URL"], pg_url)
        env.update(LRTUNE_TORCH_THREADS="1", LRTUNE_IDLE_MAX="0.5", PATH="/usr/bin:/bin",
                   PYTHONUNBUFFERED="1")
        if svc["image"].startswith("lrtune-service:"):  # that image has no torch
            env["PYTHONPATH"] = str(no_torch)
        command = list(svc["command"])
        assert command[0] == "lrtune"
        for i, arg in enumerate(command):
            if arg.isdigit() and int(arg) in ports:
                command[i] = str(ports[int(arg)])
            if arg == "0.0.0.0":
                command[i] = "127.0.0.1"
        return command[1:], env

    args, env = prepare("migrate")
    migrate = spawn(args, env, tmp_path / "migrate.log")
    assert migrate.wait(timeout=120) == 0, (tmp_path / "migrate.log").read_text()
    procs = []
    try:
        for name in ("api", "dashboard", "worker"):
            args, env = prepare(name)
            procs.append(spawn(args, env, tmp_path / f"{name}.log"))
        api_url = f"http://127.0.0.1:{ports[8000]}"
        wait_ready(api_url, procs[0])
        token = subprocess.run([sys.executable, "-m", "lrtune", "token", "create"],
                               env=prepare("api")[1], capture_output=True, text=True,
                               check=True, timeout=60, cwd=ROOT).stdout.strip()
        r = httpx.post(f"{api_url}/studies", headers={"Authorization": f"Bearer {token}"},
                       json={"name": "compose-smoke", "task": "linreg", "epochs": 2,
                             "n_trials": 3}, timeout=30)
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        deadline = time.monotonic() + 180
        while (study := httpx.get(f"{api_url}/studies/{sid}", timeout=30).json())[
                "status"] == "running":
            assert time.monotonic() < deadline
            time.sleep(0.5)
        assert study["status"] == "done" and study["progress"]["n_done"] == 3
        page = httpx.get(f"http://127.0.0.1:{ports[8080]}/dashboard", timeout=30,
                         follow_redirects=True)
        assert page.status_code == 200 and "Optuna Dashboard" in page.text
        summaries = httpx.get(f"http://127.0.0.1:{ports[8080]}/api/studies", timeout=30).json()
        assert summaries["study_summaries"][0]["study_name"] == "compose-smoke"
    finally:
        stop(*procs)
        for log in sorted(tmp_path.glob("*.log")):
            print(f"--- {log.name}\n{log.read_text()[-2000:]}")
