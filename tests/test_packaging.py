"""What `pip install lrtune` puts on sys.path claims no generic top-level name, and a user's own
``worker.py`` or ``service.py`` in the current directory breaks nothing lrtune starts."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx

from tests.conftest import CONVERGING_LR, ROOT, free_port, lrtune_env, wait_ready

INSTALLED = {"lrtune": "lrtune", "lrtune_service": "service", "lrtune_worker": "worker"}


def test_the_wheel_installs_only_lrtune_names(tmp_path: Path) -> None:
    """Built from what the Dockerfile's build stage copies, in a folder of its own (an in-tree
    build would reuse a stale build/)."""
    source = tmp_path / "src"
    for name in ("pyproject.toml", "README.md", "alembic.ini"):
        (source / name).parent.mkdir(exist_ok=True)
        shutil.copy(ROOT / name, source / name)
    for folder in INSTALLED.values():
        shutil.copytree(ROOT / folder, source / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--wheel-dir", str(tmp_path), str(source)], check=True, timeout=300)
    (wheel,) = tmp_path.glob("lrtune-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == set(INSTALLED)
    for name, folder in INSTALLED.items():  # every package and module of each folder
        sources = {p.relative_to(ROOT / folder).as_posix()
                   for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".mako")
                   and "__pycache__" not in p.parts}
        assert sources == {n.removeprefix(f"{name}/") for n in names
                           if n.startswith(f"{name}/")}, folder


def test_a_users_worker_py_shadows_nothing(db_url: str, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    for name in ("worker", "service", "lrtune_worker", "lrtune_service"):
        (project / f"{name}.py").write_text(f"raise SystemExit('the user\\'s own {name}.py')\n")
    env = lrtune_env(db_url, LRTUNE_CLOSED_READS="false")
    lrtune = str(Path(sys.executable).parent / "lrtune")
    token = subprocess.run([lrtune, "token", "create"], env=env, cwd=project, check=True,
                           capture_output=True, text=True, timeout=120).stdout.strip()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        server = subprocess.Popen([lrtune, "serve", "--port", str(port), "--workers", "1"],
                                  env=env, cwd=project, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(url, server)
        r = httpx.post(f"{url}/studies", headers={"Authorization": f"Bearer {token}"},
                       json={"name": "shadow", "task": "linreg", "n_trials": 2, "epochs": 2,
                             "space": {"lr": CONVERGING_LR}},
                       timeout=30)
        assert r.status_code == 201, r.text
        end = time.monotonic() + 180
        while (status := httpx.get(f"{url}/studies/{r.json()['id']}", timeout=30
                                   ).json()["status"]) == "running":
            assert time.monotonic() < end, log.read_text()[-3000:]
            time.sleep(0.5)
        assert status == "done", log.read_text()[-3000:]
    finally:
        server.terminate()
        server.wait(timeout=60)
    assert "the user's own" not in log.read_text()
