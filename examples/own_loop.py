"""Tune the LR schedule of your own PyTorch training loop with lrtune.

    lrtune serve --workers 0 &                        # the API (no workers needed)
    export LRTUNE_URL=http://127.0.0.1:8000 LRTUNE_TOKEN=$(lrtune token create)
    python examples/own_loop.py --study-name my-mlp   # create the study, train its trials

Run it on several machines at once (pass --study-id of the study the first one created):
each claims trials until the study's budget is spent.
"""

from __future__ import annotations

import argparse

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lrtune


def data() -> tuple[TensorDataset, TensorDataset]:
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    return TensorDataset(x[:1400], y[:1400]), TensorDataset(x[1400:], y[1400:])


def train(trial: lrtune.Trial, train_set: TensorDataset, val_set: TensorDataset) -> None:
    torch.manual_seed(trial.seed)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    loader = DataLoader(train_set, batch_size=trial.batch_size or 64, shuffle=True)
    val_x, val_y = val_set.tensors
    optimizer = trial.optimizer(model.parameters())
    scheduler = trial.scheduler(optimizer, steps_per_epoch=len(loader))
    for epoch in range(trial.epochs):
        model.train()
        for x, y in loader:
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        model.eval()
        with torch.no_grad():
            out = model(val_x)
            val_loss = nn.functional.cross_entropy(out, val_y).item()
            val_acc = (out.argmax(1) == val_y).float().mean().item()
        trial.report(epoch, val_loss, val_acc=val_acc)  # raises TrialPruned when pruned
    trial.complete(val_loss, val_acc=val_acc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study-id", type=int, help="train trials of this study")
    parser.add_argument("--study-name", default="own-loop", help="create a study so named")
    parser.add_argument("--trials", type=int, default=12, help="the new study's budget")
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
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
    train_set, val_set = data()
    for trial in study.trials():
        with trial:  # an error ends the trial FAIL; a pruned trial stops here
            print(f"training {trial}", flush=True)
            train(trial, train_set, val_set)
    print(study.refresh(), study.best(), sep="\n")


if __name__ == "__main__":
    main()
