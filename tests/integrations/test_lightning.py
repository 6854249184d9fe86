"""PyTorch Lightning: the trial's schedule steps once per optimizer step exactly as in a plain
loop, the callback reports every validation epoch and stops a pruned fit, and the example
finishes a real study."""

from __future__ import annotations

import importlib.util
from types import ModuleType
from typing import Any

import pytest
import torch

from tests.conftest import ROOT
from tests.integrations.common import (
    assert_curves,
    fake_trial,
    finished_trials,
    leases,
    need,
    plain_loop_lrs,
    sampled_config,
)
from tests.test_own_code import Api, wait_all

EPOCHS = 3


def example() -> ModuleType:
    need("lightning")
    spec = importlib.util.spec_from_file_location("lightning_train",
                                                  ROOT / "examples" / "lightning_train.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def recording(base: type) -> type:
    """``base`` that records the LR of every training batch and the epochs it trained."""

    class Recording(base):  # type: ignore[misc]
        lrs: list[float]
        epochs_run = 0

        def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
            self.lrs = getattr(self, "lrs", [])
            self.lrs.append(float(self.trainer.optimizers[0].param_groups[0]["lr"]))

        def on_train_epoch_end(self) -> None:
            self.epochs_run += 1

    return Recording


def fit_model(train: ModuleType, trial: Any, model: type) -> tuple[Any, Any]:
    import lightning.pytorch as pl

    from lrtune_worker.integrations.lightning import LrtuneCallback

    pl.seed_everything(0, verbose=False)
    loaders = train.loaders(64)
    callback = LrtuneCallback(trial)
    module = model(trial)
    pl.Trainer(max_epochs=trial.epochs, accelerator="cpu", devices=1, callbacks=[callback],
               enable_checkpointing=False, logger=False, enable_progress_bar=False,
               enable_model_summary=False).fit(module, *loaders)
    return module, callback


@pytest.mark.parametrize("family", ["onecycle", "cosine"])
def test_the_schedule_steps_per_batch_as_in_a_plain_loop(family: str) -> None:
    train = example()
    config = sampled_config([family])
    trial = fake_trial(config, EPOCHS)
    module, callback = fit_model(train, trial, recording(train.DigitsMLP))
    steps = -(-1400 // 64)
    assert len(module.lrs) == EPOCHS * steps
    assert module.lrs == pytest.approx(plain_loop_lrs(config, EPOCHS, steps), rel=1e-9)
    assert len(set(module.lrs)) > EPOCHS  # it moved within epochs, not only across them
    reports = leases(trial).reports()
    assert [r["epoch"] for r in reports] == list(range(EPOCHS))  # no sanity-check report
    assert reports[0]["steps_per_epoch"] == steps
    assert "val_acc" in reports[0]["trials"][0]["metrics"]
    assert [r["trials"][0]["lr"] for r in reports] == pytest.approx(
        [module.lrs[e * steps] for e in range(EPOCHS)])
    ending = leases(trial).endings()
    assert ending == [{"number": 0, "state": "COMPLETE", "value": reports[-1]["trials"][0][
        "value"], "metrics": {}}]
    assert not callback.pruned and trial.ended == "COMPLETE"


def test_a_pruned_trial_stops_the_fit() -> None:
    train = example()
    trial = fake_trial(sampled_config(["cosine"]), 6, prune_at=1)
    module, callback = fit_model(train, trial, recording(train.DigitsMLP))
    assert callback.pruned and trial.ended == "PRUNED"
    assert module.epochs_run == 2  # epoch 1's report pruned it: no third epoch
    assert [r["epoch"] for r in leases(trial).reports()] == [0, 1]
    assert not leases(trial).endings()  # the server ended it


def test_a_far_worse_trial_is_pruned_by_the_median_pruner(api: Api) -> None:
    """The server's median pruner: five trials report 0.5 per epoch, then a Lightning fit
    whose val_loss is 100 more is pruned after the warm-up epoch."""
    train = example()
    study = api.client().create(name="lightning-pruned", task="external", epochs=4,
                                n_trials=6, pruner={"name": "median"},
                                space={"families": ["cosine"], "optimizers": ["momentum"],
                                       "lr": {"low": 1e-2, "high": 1e-1}})
    for trial in study.trials(max_trials=5):
        with trial:
            for epoch in range(4):
                trial.report(epoch, 0.5)
    bad_model = recording(train.DigitsMLP)

    class FarWorse(bad_model):  # type: ignore[misc, valid-type]
        def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
            x, y = batch
            self.log("val_loss", torch.nn.functional.cross_entropy(self(x), y) + 100.0)

    for trial in study.trials():  # the sixth, the last
        with trial:
            module, callback = fit_model(train, trial, FarWorse)
    assert callback.pruned and module.epochs_run == 2  # warm-up epoch 0, pruned at 1
    details = finished_trials(api, study.id, 6)
    last = next(d for d in details if d["number"] == trial.number)
    assert last["state"] == "PRUNED" and len(last["metric_curve"]) == 2
    assert last["metric_curve"][0] > 100
    assert study.refresh().status == "done"


def test_the_example_finishes_a_study(api: Api) -> None:
    example()
    study = api.client().create(name="lightning", task="external", objective="val_loss",
                                epochs=EPOCHS, n_trials=4, pruner={"name": "median"},
                                space={"families": ["cosine", "onecycle", "step", "wsd"],
                                       "optimizers": ["momentum", "adamw"],
                                       "lr": {"low": 1e-3, "high": 0.3}})
    run = api.script(["examples/lightning_train.py", "--study-id", str(study.id)],
                     "lightning.log")
    try:
        wait_all(run, timeout=180)
    finally:
        if run.poll() is None:
            run.kill()
    details = finished_trials(api, study.id, 4)
    assert_curves(details, EPOCHS)
    assert (api.tmp / "lightning.log").read_text().count("training Trial(") == 4
    assert study.refresh().status == "done"
