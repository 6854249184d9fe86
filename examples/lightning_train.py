"""Tune the LR schedule of a PyTorch Lightning model with lrtune.

    pip install 'lrtune[worker,lightning]'
    lrtune serve --workers 0 &                        # the API (no workers needed)
    export LRTUNE_URL=http://127.0.0.1:8000 LRTUNE_TOKEN=$(lrtune token create)
    python examples/lightning_train.py --study-name my-lightning

Each trial is one ``Trainer.fit``: ``configure_optimizers`` returns the trial's optimizer and
schedule (stepped per batch), and ``LrtuneCallback`` reports each validation epoch's
``val_loss``, stops a pruned trial's fit and completes the trial at the end.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import lightning.pytorch as pl
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lrtune
from lrtune_worker.integrations.lightning import LrtuneCallback, trial_optimizers


class DigitsMLP(pl.LightningModule):
    def __init__(self, trial: lrtune.Trial, hidden: int = 64) -> None:
        super().__init__()
        self.trial = trial
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
        x, y = batch
        out = self(x)
        self.log("val_loss", nn.functional.cross_entropy(out, y))
        self.log("val_acc", (out.argmax(1) == y).float().mean())

    def configure_optimizers(self) -> Any:
        return trial_optimizers(self.trial, self)  # the trial's optimizer + per-step schedule


def loaders(batch_size: int) -> tuple[DataLoader, DataLoader]:
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    train = TensorDataset(x[:1400], y[:1400])
    val = TensorDataset(x[1400:], y[1400:])
    return (DataLoader(train, batch_size=batch_size, shuffle=True),
            DataLoader(val, batch_size=len(val)))


def fit(trial: lrtune.Trial, model: type[DigitsMLP] = DigitsMLP) -> LrtuneCallback:
    """Train one trial with Lightning; returns its callback (``pruned``: the fit stopped)."""
    pl.seed_everything(trial.seed, verbose=False)
    train, val = loaders(trial.batch_size or 64)
    callback = LrtuneCallback(trial, monitor="val_loss")
    trainer = pl.Trainer(max_epochs=trial.epochs, accelerator="cpu", devices=1,
                         callbacks=[callback], enable_checkpointing=False, logger=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model(trial), train, val)
    return callback


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study-id", type=int, help="train trials of this study")
    parser.add_argument("--study-name", default="lightning", help="create a study so named")
    parser.add_argument("--trials", type=int, default=8, help="the new study's budget")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    client = lrtune.Client()
    if args.study_id is None:
        study = client.create(name=args.study_name, task="external", objective="val_loss",
                              epochs=args.epochs, n_trials=args.trials,
                              space={"families": ["cosine", "onecycle", "step", "wsd"],
                                     "optimizers": ["momentum", "adamw"],
                                     "lr": {"low": 1e-3, "high": 0.3}})
        print(f"study {study.id} created", flush=True)
    else:
        study = client.get(args.study_id)
    for trial in study.trials():
        with trial:  # an error ends the trial FAIL
            print(f"training {trial}", flush=True)
            callback = fit(trial)
            print(f"trial {trial.number} {'pruned' if callback.pruned else 'done'}", flush=True)
    print(study.refresh(), study.best(), sep="\n")


if __name__ == "__main__":
    main()
