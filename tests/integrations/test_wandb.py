"""Weights & Biases in offline mode: each trial one run grouped by its study, from your own
loop (``log_trial``) and from lrtune's own workers (``LRTUNE_WANDB_PROJECT``), single trials
and packs; read back from the runs' ``.wandb`` files and compared with what lrtune stored."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lrtune.settings import Settings
from lrtune.spec import StudySpec
from lrtune.store import Store
from lrtune_worker.loop import Worker
from tests.conftest import CONVERGING_LR, ROOT
from tests.integrations.common import (
    OfflineRun,
    assert_curves,
    finished_trials,
    need,
    offline_runs,
)
from tests.test_own_code import Api, wait_all

EPOCHS = 3


def assert_run_is_the_trial(run: OfflineRun, study: str, number: int, state: str,
                            value: float | None, params: dict[str, Any],
                            config: dict[str, Any], curve: list[float],
                            lrs: list[float]) -> None:
    assert run.group == study and run.name == f"{study}-{number}"
    assert run.config["study"] == study and run.config["trial"] == number
    assert run.config["params"] == params
    assert run.config["schedule"] == config["schedule"]
    assert run.config["optimizer"] == config["optimizer"]
    assert run.config["epochs"] == EPOCHS and run.config["objective"] == "val_loss"
    assert [row["epoch"] for row in run.history] == list(range(len(curve)))
    assert [row["value"] for row in run.history] == pytest.approx(curve)
    assert [row["lr"] for row in run.history] == pytest.approx(lrs)
    assert run.summary["state"] == state
    if value is not None:
        assert run.summary["value"] == pytest.approx(value)
    if state == "PRUNED":
        assert run.summary["reason"] in ("pruned", "diverged")
    assert run.exit_code == 0


def test_log_trial_logs_each_trial_of_your_loop(api: Api) -> None:
    need("wandb")
    study = api.client().create(name="wandb-loop", task="external", objective="val_loss",
                                epochs=EPOCHS, n_trials=4, pruner={"name": "median"},
                                space={"families": ["cosine", "onecycle", "step", "wsd"],
                                       "optimizers": ["momentum", "adamw"],
                                       "lr": {"low": 1e-3, "high": 0.3}})
    run = api.script(["examples/wandb_train.py", "--study-id", str(study.id),
                      "--project", "lrtune-test"], "wandb.log")
    try:
        wait_all(run, timeout=180)
    finally:
        if run.poll() is None:
            run.kill()
    details = finished_trials(api, study.id, 4)
    assert_curves(details, EPOCHS)
    runs = {r.config["trial"]: r for r in offline_runs(api.tmp)}
    assert sorted(runs) == sorted(d["number"] for d in details)
    for d in details:
        r = runs[d["number"]]
        assert r.project == "lrtune-test" and r.config["study_id"] == study.id
        assert_run_is_the_trial(r, "wandb-loop", d["number"], d["state"], d["value"],
                                d["params"], d["config"], d["metric_curve"], d["lr_curve"])
        assert all("val_acc" in row for row in r.history)


def test_lrtunes_workers_log_each_trial_single_and_packed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    need("wandb")
    monkeypatch.setenv("LRTUNE_WANDB_PROJECT", "lrtune-workers")
    store = Store(Settings(database_url=f"sqlite:///{tmp_path / 'lrtune.db'}"))
    tiny = {"task": "linreg", "epochs": EPOCHS, "pruner": {"name": "none"},
            "space": {"families": ["cosine", "step", "onecycle"], "lr": CONVERGING_LR}}
    single = store.create_study(StudySpec(name="single", n_trials=2, **tiny), "me")
    packed = store.create_study(StudySpec(name="packed", n_trials=4, pack=4, **tiny), "me")
    worker = Worker(store.settings, device="cpu", exit_when_idle=True)
    worker.store = store
    try:
        assert worker.run() == 6
        runs = offline_runs(tmp_path)
        assert len(runs) == 6
        for record in (single, packed):
            trials = store.all_trials(record)
            assert len(trials) == record.spec.n_trials
            for t in trials:
                (r,) = [r for r in runs if r.name == f"{record.name}-{t.number}"]
                assert r.project == "lrtune-workers" and r.config["task"] == "linreg"
                curve = [t.intermediate_values[e] for e in sorted(t.intermediate_values)]
                assert_run_is_the_trial(r, record.name, t.number, t.state.name, t.value,
                                        t.params, t.user_attrs["config"], curve,
                                        t.user_attrs["lr_curve"])
    finally:
        store.db.engine.dispose()
        store.optuna_storage.engine.dispose()


@pytest.mark.parametrize("pack", [1, 3])
def test_a_stopping_worker_ends_its_runs_unfinished(
        pack: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker stopping mid-trial hands its trials back (they run again): their runs end
    UNFINISHED, with the epochs they had, and exit code 1."""
    need("wandb")
    import torch

    from lrtune_worker.pack import run_pack
    from lrtune_worker.runner import Stopping
    from lrtune_worker.stored import StoreLot

    monkeypatch.setenv("LRTUNE_WANDB_PROJECT", "lrtune-workers")
    store = Store(Settings(database_url=f"sqlite:///{tmp_path / 'lrtune.db'}"))
    store.create_study(StudySpec(name="stopped", task="linreg", epochs=EPOCHS, n_trials=pack,
                                 pack=pack, space={"lr": CONVERGING_LR}), "me")

    def stop() -> None:
        raise Stopping

    try:
        claims = store.claim_pack(pack)
        assert len(claims) == pack
        lot = StoreLot(store, claims, store.settings.heartbeat_interval)
        with pytest.raises(Stopping):
            run_pack(lot, claims[0].record.search_spec, torch.device("cpu"), stop,
                     lambda slot, outcome: None)
        runs = offline_runs(tmp_path)
        assert len(runs) == pack
        for r in runs:
            assert r.summary["state"] == "UNFINISHED" and r.exit_code == 1
            assert r.summary["reason"] == "handed back: worker stopping"
            assert len(r.history) <= 1  # stopped at the first epoch's first report
        assert sum(len(r.history) for r in runs) >= 1
    finally:
        store.db.engine.dispose()
        store.optuna_storage.engine.dispose()


def test_without_the_setting_workers_neither_log_nor_import_wandb(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from lrtune_worker.integrations import NO_LOG, trial_log

    monkeypatch.delenv("LRTUNE_WANDB_PROJECT", raising=False)
    assert trial_log("s", 0, {}, {}) is NO_LOG
    code = ("import sys, lrtune_worker.runner, lrtune_worker.pack, lrtune_worker.loop; "
            "assert 'wandb' not in sys.modules, 'wandb imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


def test_a_run_that_cannot_start_does_not_fail_the_trial(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    need("wandb")
    from lrtune_worker.integrations import NO_LOG, trial_log
    from lrtune_worker.integrations.wandb import WandbTrialLog

    def refuse(*args: Any, **kwargs: Any) -> WandbTrialLog:
        raise RuntimeError("no W&B here")

    monkeypatch.setenv("LRTUNE_WANDB_PROJECT", "p")
    monkeypatch.setattr(WandbTrialLog, "start", refuse)
    assert trial_log("s", 3, {}, {}) is NO_LOG
    assert "study s trial 3: no W&B run (RuntimeError: no W&B here)" in caplog.text
