"""Your own training code, end to end on both databases: `lrtune serve --workers 0`, an
external study, a plain torch loop through `study.trials()` and a script run by `lrtune agent`
at once, and a script SIGKILLed mid-trial."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

import lrtune
from tests.conftest import ROOT, free_port, lrtune_env, spawn, stop, wait_ready
from tests.test_e2e import Deployment, assert_dashboard_extras, assert_exact

SPEC = {"task": "external", "objective": "val_loss", "epochs": 4, "n_trials": 12,
        "space": {"families": ["cosine", "onecycle", "step", "wsd"],
                  "optimizers": ["momentum", "adamw"], "lr": {"low": 1e-3, "high": 0.3}},
        "pruner": {"name": "median"}}


@dataclass
class Api:
    url: str
    env: dict[str, str]  # a user's: LRTUNE_URL and LRTUNE_TOKEN set
    tmp: Path

    def client(self) -> lrtune.Client:
        return lrtune.Client(self.url, self.env["LRTUNE_TOKEN"])

    def script(self, args: list[str], log: str) -> subprocess.Popen:
        handle = open(self.tmp / log, "ab")  # noqa: SIM115 - closed with the process
        return subprocess.Popen([sys.executable, *args], env=self.env, cwd=ROOT,
                                stdout=handle, stderr=subprocess.STDOUT)


@contextmanager
def serve_api(db_url: str, tmp_path: Path, **settings: str) -> Iterator[Api]:
    """`lrtune serve --workers 0` on ``db_url`` with a user's token, its logs printed after."""
    env = lrtune_env(db_url, **settings)
    token = subprocess.run([sys.executable, "-m", "lrtune", "token", "create", "--name", "me"],
                           env=env, capture_output=True, text=True, check=True,
                           timeout=120).stdout.strip()
    port = free_port()
    server = spawn(["serve", "--port", str(port), "--workers", "0"], env,
                   tmp_path / "server.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, server)
        yield Api(url, {**env, "LRTUNE_URL": url, "LRTUNE_TOKEN": token}, tmp_path)
    finally:
        stop(server)
        for log in sorted(tmp_path.glob("*.log")):
            print(f"--- {log.name}\n{log.read_text()[-3000:]}")


@pytest.fixture
def api(db_url: str, tmp_path: Path) -> Iterator[Api]:
    with serve_api(db_url, tmp_path) as served:
        yield served


def wait_all(*procs: subprocess.Popen, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    for p in procs:
        p.wait(timeout=max(1.0, end - time.monotonic()))
        assert p.returncode == 0, p.args


def test_a_torch_loop_and_an_agent_train_one_study(api: Api) -> None:
    study = api.client().create({**SPEC, "name": "own-code"})
    loop = api.script(["examples/own_loop.py", "--study-id", str(study.id)], "loop.log")
    agent = api.script(["-m", "lrtune", "agent", str(study.id), "--",
                        sys.executable, "examples/agent_train.py", "--hidden", "32"],
                       "agent.log")
    try:
        wait_all(loop, agent)
    finally:
        stop(loop, agent)
    shown = study.refresh()
    assert shown.status == "done"
    deployment = Deployment(api.url, api.env["LRTUNE_TOKEN"], api.env, api.tmp, [])
    trials = deployment.trials(study.id)
    assert_exact(trials, 12)
    assert not [t for t in trials if t["state"] == "FAIL"]
    assert "training Trial(" in (api.tmp / "loop.log").read_text()
    assert "running" in (api.tmp / "agent.log").read_text()  # both trained trials
    assert (api.tmp / "agent.log").read_text().count("running") >= 1
    for t in trials:
        detail = httpx.get(f"{api.url}/studies/{study.id}/trials/{t['number']}",
                           timeout=30).json()
        assert len(detail["lr_curve"]) == len(detail["metric_curve"]) >= 1
    assert_dashboard_extras(deployment, shown.data)
    code = study.best_code()
    import torch

    ns: dict = {"model": torch.nn.Linear(64, 10)}
    exec(compile(code, "best_code", "exec"), ns)
    assert isinstance(ns["optimizer"], torch.optim.Optimizer)
    assert f"STEPS_PER_EPOCH = {-(-1400 // 64)}" in code or "STEPS_PER_EPOCH" in code


def test_a_killed_script_loses_its_trial_and_another_reruns_it(api: Api) -> None:
    study = api.client().create({**SPEC, "name": "killed", "n_trials": 6, "epochs": 30,
                                 "pruner": {"name": "none"}})
    victim = api.script(["examples/own_loop.py", "--study-id", str(study.id)], "victim.log")
    end = time.monotonic() + 120
    while time.monotonic() < end:  # mid-trial: it has reported an epoch
        running = [t for t in api.client().trials(study.id)["items"]
                   if t["state"] == "RUNNING"]
        if running and httpx.get(f"{api.url}/studies/{study.id}/trials/"
                                 f"{running[0]['number']}", timeout=30).json()["metric_curve"]:
            break
        time.sleep(0.2)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    lost = running[0]["number"]
    survivor = api.script(["examples/own_loop.py", "--study-id", str(study.id)],
                          "survivor.log")
    try:
        wait_all(survivor)
    finally:
        stop(survivor)
    trials = api.client().trials(study.id)["items"]
    assert_exact(trials, 6)
    gone = next(t for t in trials if t["number"] == lost)
    assert gone["state"] == "FAIL" and gone["reason"].startswith("lost")
    assert any(t["retry_of"] == lost and t["state"] in ("COMPLETE", "PRUNED") for t in trials)
    assert study.refresh().status == "done"


def test_the_client_docstring_example_runs(api: Api) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "import doctest, sys, lrtune.client; "
         "sys.exit(min(doctest.testmod(lrtune.client).failed, 1))"],
        env=api.env, cwd=api.tmp, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert api.client().list()[0].status == "done"


def test_the_agent_ends_what_a_script_left_running(api: Api) -> None:
    study = api.client().create({**SPEC, "name": "left-running", "n_trials": 2})
    crash = "import lrtune, sys; t = lrtune.current_trial(); t.report(0, 1.0); sys.exit(3)"
    out = subprocess.run([sys.executable, "-m", "lrtune", "agent", str(study.id), "--count",
                          "1", "--", sys.executable, "-c", crash], env=api.env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "agent ran 1 trial(s)" in out.stderr
    trial = api.client().trials(study.id)["items"][0]
    assert trial["state"] == "FAIL"
    assert trial["reason"] == "failed: the script exited with code 3 without ending trial 0"
    no_command = subprocess.run([sys.executable, "-m", "lrtune", "agent", str(study.id)],
                                env=api.env, capture_output=True, text=True, timeout=60)
    assert no_command.returncode != 0 and "after --" in no_command.stderr
