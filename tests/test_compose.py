"""Dockerfile and docker-compose.yml, checked without a Docker engine.

hadolint lints the Dockerfile; the real Compose v2 binary parses the compose file; the smoke
test runs each compose service's own command as a local process against local PostgreSQL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from tests.conftest import CONVERGING_LR, ROOT, _pg_database, free_port, spawn, stop, wait_ready

BIN = Path(sys.executable).parent
PASSWORD = "a $ecret: with/@%& every' kind\" of character"


def compose(*args: str, env: dict[str, str] | None = None, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("POSTGRES_", "LRTUNE_"))}
    return subprocess.run([str(BIN / "docker-compose"), "--project-directory", str(ROOT),
                           "-f", str(ROOT / "docker-compose.yml"), *args],
                          capture_output=True, text=True, check=check, timeout=60,
                          env={**base, **(env or {})})


def compose_config(*args: str) -> dict:
    """The resolved configuration, ``$$`` (Compose's escape in its output) read as ``$``."""
    out = compose(*args, "config", "--format", "json", env={"POSTGRES_PASSWORD": PASSWORD})
    return json.loads(out.stdout.replace("$$", "$"))  # type: ignore[no-any-return]


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


def test_compose_file_parses() -> None:
    compose("--env-file", str(ROOT / ".env.example"), "config", "--quiet")
    compose("config", "--quiet", env={"POSTGRES_PASSWORD": PASSWORD})


def test_compose_refuses_to_start_without_a_password() -> None:
    refused = compose("config", "--format", "json", check=False)
    # this build of Compose exits 0 here, but gives no configuration, only the error
    assert refused.stdout == "" and "set POSTGRES_PASSWORD in .env" in refused.stderr


def test_lrtune_refuses_the_example_password() -> None:
    example = dict(line.split("=", 1) for line in (ROOT / ".env.example").read_text()
                   .splitlines() if line and not line.startswith("#"))
    cfg = json.loads(compose("--env-file", str(ROOT / ".env.example"), "config", "--format",
                             "json").stdout)
    env = {**{k: str(v) for k, v in cfg["services"]["migrate"]["environment"].items()},
           "PATH": "/usr/bin:/bin"}
    assert env["LRTUNE_DATABASE_PASSWORD"] == example["POSTGRES_PASSWORD"]
    proc = subprocess.run([sys.executable, "-m", "lrtune", "migrate"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "placeholder" in proc.stderr
    assert example["POSTGRES_PASSWORD"] not in proc.stdout


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
    for name, port in (("api", 8000), ("dashboard", 8080)):
        published = services[name]["ports"][0]
        assert published["target"] == port and published["host_ip"] == "127.0.0.1"
    environment = services["api"]["environment"]
    assert environment["LRTUNE_DATABASE_PASSWORD"] == PASSWORD  # apart from the URL
    assert PASSWORD not in environment["LRTUNE_DATABASE_URL"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == PASSWORD
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
                             "n_trials": 3, "space": {"lr": CONVERGING_LR}}, timeout=30)
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
