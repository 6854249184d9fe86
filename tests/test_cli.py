import json
import subprocess
import sys
from pathlib import Path

import pytest

from lrtune.schedules import FAMILIES, Schedule

LRTUNE = [sys.executable, "-m", "lrtune"]


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([*LRTUNE, *args], capture_output=True, text=True, check=check,
                          timeout=300)


def test_schedules_json_lists_every_family() -> None:
    data = json.loads(run("schedules", "--json").stdout)
    assert [f["name"] for f in data["families"]] == list(FAMILIES)


def test_schedules_table() -> None:
    assert "onecycle" in run("schedules").stdout


def test_curve_json_matches_the_catalogue() -> None:
    out = run("curve", "step", "--set", "gamma=0.5", "--set", "warmup.fraction=0.2",
              "--epochs", "4", "--steps-per-epoch", "5", "--lr", "0.1", "--json").stdout
    lrs = json.loads(out)["lr"]
    want = Schedule.build("step", {"gamma": 0.5}, {"fraction": 0.2}).curve(20, 5, 0.1)
    assert lrs == pytest.approx(want, rel=1e-12)


def test_curve_plain_prints_every_step() -> None:
    lines = run("curve", "cosine", "--epochs", "2", "--steps-per-epoch", "3").stdout.split("\n")
    assert len([x for x in lines if x]) == 6


def test_curve_bad_parameter_is_a_clear_error() -> None:
    proc = run("curve", "step", "--set", "gamma=2", check=False)
    assert proc.returncode == 2 and "step.gamma" in proc.stderr


def test_tune_runs_a_local_study(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'tune.db'}"
    proc = run("tune", "--task", "linreg", "--trials", "6", "--epochs", "3", "--storage", db,
               "--families", "cosine,step", "--baseline")
    assert "best trial #" in proc.stdout and "baseline SGD" in proc.stdout
    code = proc.stdout.split("# PyTorch\n", 1)[1].split("baseline SGD")[0]
    import torch

    ns: dict = {"model": torch.nn.Linear(10, 1)}
    exec(code, ns)
    assert ns["scheduler"] is not None


def test_tune_climbs_the_horizon_ladder(tmp_path: Path) -> None:
    import optuna

    db = f"sqlite:///{tmp_path / 'ladder.db'}"
    proc = run("tune", "--task", "linreg", "--trials", "10", "--epochs", "9", "--storage", db,
               "--pruner", "horizon", "--families", "cosine,wsd", "--lr", "0.001:0.03")
    assert "best trial #" in proc.stdout
    study = optuna.load_study(study_name="linreg-tune", storage=db)
    rungs = [t.user_attrs["horizon"]["rung"] for t in study.trials]
    assert len(rungs) == 10 and rungs[0] == 0 and rungs[-1] == 2  # the last slot: full
    assert all((t.state.name == "COMPLETE") == (r == 2) for t, r in zip(study.trials, rungs,
                                                                          strict=True)
               if t.user_attrs.get("reason") != "diverged")
    assert study.best_trial.user_attrs["horizon"]["rung"] == 2


def test_tune_unknown_task_is_a_clear_error(tmp_path: Path) -> None:
    proc = run("tune", "--task", "nope", "--storage", f"sqlite:///{tmp_path / 'x.db'}",
               check=False)
    assert proc.returncode == 2 and "unknown task" in proc.stderr
    proc = run("tune", "--task", "external", "--storage", f"sqlite:///{tmp_path / 'x.db'}",
               check=False)
    assert proc.returncode == 2 and "lrtune.Client" in proc.stderr


def test_core_and_service_import_without_torch() -> None:
    code = ("import sys, lrtune.cli, lrtune.space, lrtune.export, lrtune.results, lrtune.study; "
            "import lrtune_service.app; "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_secrets_are_never_printed(tmp_path: Path) -> None:
    """The database password, whether in the URL or in LRTUNE_DATABASE_PASSWORD, appears
    in no output of migrate, serve or token create."""
    import os
    from contextlib import contextmanager

    import httpx

    from tests.conftest import _pg_database, free_port, spawn, stop, wait_ready

    secret = "hunter2:/@%-secret"  # trust auth accepts any password here
    with contextmanager(_pg_database)() as url:
        base = {k: v for k, v in os.environ.items() if not k.startswith("LRTUNE_")}
        env = {**base, "LRTUNE_DATABASE_URL": url, "LRTUNE_DATABASE_PASSWORD": secret}
        migrate = subprocess.run([*LRTUNE, "migrate"], env=env, capture_output=True,
                                 text=True, timeout=120, check=True)
        assert secret not in migrate.stdout + migrate.stderr and "***" in migrate.stdout
        token = subprocess.run([*LRTUNE, "token", "create"], env=env, capture_output=True,
                               text=True, timeout=120, check=True)
        assert secret not in token.stdout + token.stderr
        port = free_port()
        server = spawn(["serve", "--port", str(port)], env, tmp_path / "serve.log")
        try:
            wait_ready(f"http://127.0.0.1:{port}", server)
            assert httpx.get(f"http://127.0.0.1:{port}/studies", timeout=30).status_code == 200
        finally:
            stop(server)
        log = (tmp_path / "serve.log").read_text()
        assert secret not in log and "***" in log


def test_lr_find_writes_a_plot_only_when_asked(tmp_path: Path) -> None:
    proc = subprocess.run([*LRTUNE, "lr-find", "--task", "linreg", "--optimizers", "sgd",
                           "--steps", "20", "--json"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, check=True)
    assert json.loads(proc.stdout)["plot"] is None and list(tmp_path.iterdir()) == []


def test_schedules_show_fixed_parameters_as_such() -> None:
    assert "[None, None]" not in run("schedules").stdout


def test_an_unreachable_server_is_a_plain_message() -> None:
    import os

    from tests.conftest import free_port

    env = {**os.environ, "LRTUNE_URL": f"http://127.0.0.1:{free_port()}"}
    proc = subprocess.run([*LRTUNE, "best", "1"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1 and "cannot reach the lrtune API" in proc.stderr
    assert "HTTP 0" not in proc.stderr


def tune(tmp_path: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith("LRTUNE_")}
    return subprocess.run([*LRTUNE, "tune", "--task", "linreg", "--trials", "3", "--epochs",
                           "2", *args], cwd=tmp_path, env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=300)


def test_tune_continues_the_same_spec_and_refuses_another(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    first = tune(tmp_path, "--families", "cosine,step", env={"LRTUNE_DATABASE_URL": db})
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "runs.db").exists() and not (tmp_path / "lrtune.db").exists()
    again = tune(tmp_path, "--families", "cosine,step", env={"LRTUNE_DATABASE_URL": db})
    assert again.returncode == 0 and "continuing study linreg-tune: 3 of 3" in again.stdout
    other = tune(tmp_path, "--families", "onecycle", env={"LRTUNE_DATABASE_URL": db})
    assert other.returncode == 2
    assert "space.families" in other.stderr and "--study" in other.stderr
    assert "--resume" in other.stderr
    longer = tune(tmp_path, "--families", "onecycle", "--epochs", "5", "--resume",
                  env={"LRTUNE_DATABASE_URL": db})
    assert longer.returncode == 0 and "continuing study" in longer.stdout
    assert "2 epochs" in longer.stdout  # its own, stored spec


def test_tune_fails_when_trials_fail(tmp_path: Path) -> None:
    from tests.faults.common import PLUGINS

    proc = tune(tmp_path, "--task", "fault-raise", "--storage",
                f"sqlite:///{tmp_path / 'f.db'}", env={"PYTHONPATH": PLUGINS})
    assert proc.returncode == 1 and "trial(s) failed" in proc.stdout
    assert "task exploded on purpose" in proc.stdout
