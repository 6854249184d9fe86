"""Hugging Face ``Trainer``: the trial's schedule steps once per optimizer step exactly as in a
plain loop, the callback reports every epoch's evaluation and stops a pruned trial, and the
example finishes a real study. Nothing is downloaded (HF_HUB_OFFLINE=1, a BERT from a config
in code)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

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
STEPS = -(-1400 // 64)


def example() -> ModuleType:
    need("transformers")
    need("accelerate")
    spec = importlib.util.spec_from_file_location("hf_train", ROOT / "examples" / "hf_train.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def recorder() -> Any:
    """A callback that records the LR of every optimizer step and the epochs trained."""
    from transformers import TrainerCallback

    class Recorder(TrainerCallback):
        def __init__(self) -> None:
            self.lrs: list[float] = []
            self.epochs = 0

        def on_step_begin(self, args: Any, state: Any, control: Any, optimizer: Any = None,
                          **kwargs: Any) -> None:
            self.lrs.append(float(optimizer.param_groups[0]["lr"]))

        def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.epochs += 1

    return Recorder()


def far_worse(train: ModuleType, seed: int) -> Any:
    """The example's BERT whose evaluation loss is 100 more than it is."""
    base = type(train.tiny_bert(seed))

    class FarWorse(base):  # type: ignore[misc, valid-type]
        def forward(self, input_ids: Any = None, labels: Any = None, **kwargs: Any) -> Any:
            # named: Trainer passes a model only the columns its forward names
            out = super().forward(input_ids=input_ids, labels=labels, **kwargs)
            if not self.training:
                out.loss = out.loss + 100.0
            return out

    return FarWorse(train.tiny_bert(seed).config)


@pytest.mark.parametrize("family", ["onecycle", "wsd"])
def test_the_schedule_steps_per_batch_as_in_a_plain_loop(family: str, tmp_path: Path) -> None:
    train = example()
    config = sampled_config([family])
    trial = fake_trial(config, EPOCHS)
    seen = recorder()
    callback = train.train(trial, train.Digits(slice(0, 1400)), train.Digits(slice(1400, None)),
                           str(tmp_path), callbacks=[seen])
    assert len(seen.lrs) == EPOCHS * STEPS
    assert seen.lrs == pytest.approx(plain_loop_lrs(config, EPOCHS, STEPS), rel=1e-9)
    assert len(set(seen.lrs)) > EPOCHS  # it moved within epochs, not only across them
    reports = leases(trial).reports()
    assert [r["epoch"] for r in reports] == list(range(EPOCHS))
    assert reports[0]["steps_per_epoch"] == STEPS
    assert [r["trials"][0]["lr"] for r in reports] == pytest.approx(
        [seen.lrs[e * STEPS] for e in range(EPOCHS)])
    assert leases(trial).endings() == [
        {"number": 0, "state": "COMPLETE", "value": reports[-1]["trials"][0]["value"],
         "metrics": {}}]
    assert not callback.pruned and trial.ended == "COMPLETE"


def test_a_pruned_trial_stops_training(tmp_path: Path) -> None:
    train = example()
    trial = fake_trial(sampled_config(["cosine"]), 6, prune_at=1)
    seen = recorder()
    callback = train.train(trial, train.Digits(slice(0, 1400)), train.Digits(slice(1400, None)),
                           str(tmp_path), callbacks=[seen])
    assert callback.pruned and trial.ended == "PRUNED"
    assert seen.epochs == 2 and len(seen.lrs) == 2 * STEPS  # no third epoch
    assert [r["epoch"] for r in leases(trial).reports()] == [0, 1]
    assert not leases(trial).endings()  # the server ended it


def test_a_wrong_steps_per_epoch_is_refused(tmp_path: Path) -> None:
    train = example()
    trial = fake_trial(sampled_config(["cosine"]), 2)
    model = train.tiny_bert(0)
    trial.hf_optimizers(model, STEPS + 1)  # as a loop of another batch size would
    from transformers import Trainer, TrainingArguments

    from lrtune_worker.integrations.transformers import LrtuneTrainerCallback

    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=2, use_cpu=True,
                             per_device_train_batch_size=64, eval_strategy="epoch",
                             save_strategy="no", report_to="none", disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=train.Digits(slice(0, 1400)),
                      eval_dataset=train.Digits(slice(1400, None)),
                      optimizers=trial.hf_optimizers(model, STEPS + 1),
                      callbacks=[LrtuneTrainerCallback(trial)])
    with pytest.raises(ValueError, match="steps per epoch"):
        trainer.train()


def test_a_far_worse_trial_is_pruned_by_the_median_pruner(api: Api) -> None:
    """The server's median pruner: five trials report 0.5 per epoch, then a Trainer whose
    eval_loss is 100 more is pruned after the warm-up epoch."""
    train = example()
    study = api.client().create(name="hf-pruned", task="external", epochs=4, n_trials=6,
                                pruner={"name": "median"},
                                space={"families": ["cosine"], "optimizers": ["adamw"],
                                       "lr": {"low": 1e-4, "high": 1e-2}})
    for trial in study.trials(max_trials=5):
        with trial:
            for epoch in range(4):
                trial.report(epoch, 0.5)
    seen = recorder()
    for trial in study.trials():  # the sixth, the last
        with trial:
            callback = train.train(trial, train.Digits(slice(0, 1400)),
                                   train.Digits(slice(1400, None)), str(api.tmp / "out"),
                                   model=far_worse(train, trial.seed), callbacks=[seen])
    assert callback.pruned and seen.epochs == 2  # warm-up epoch 0, pruned at 1
    details = finished_trials(api, study.id, 6)
    last = next(d for d in details if d["number"] == trial.number)
    assert last["state"] == "PRUNED" and len(last["metric_curve"]) == 2
    assert last["metric_curve"][0] > 100
    assert study.refresh().status == "done"


def test_the_example_finishes_a_study(api: Api) -> None:
    example()
    study = api.client().create(name="hf", task="external", objective="val_loss",
                                epochs=EPOCHS, n_trials=4, pruner={"name": "median"},
                                space={"families": ["cosine", "onecycle", "wsd"],
                                       "optimizers": ["adamw"],
                                       "lr": {"low": 1e-4, "high": 1e-2}})
    run = api.script(["examples/hf_train.py", "--study-id", str(study.id)], "hf.log")
    try:
        wait_all(run, timeout=180)
    finally:
        if run.poll() is None:
            run.kill()
    details = finished_trials(api, study.id, 4)
    assert_curves(details, EPOCHS)
    assert (api.tmp / "hf.log").read_text().count("training Trial(") == 4
    assert study.refresh().status == "done"
