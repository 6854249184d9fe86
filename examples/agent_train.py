"""A training script for `lrtune agent`: it trains the one trial the agent hands it.

    lrtune agent STUDY_ID -- python examples/agent_train.py --hidden 64

The agent claims a trial, keeps it alive, runs this script with the trial in its
environment, and claims the next when it exits. Here the trial comes from
``lrtune.current_trial()``; the rest is an ordinary PyTorch loop.
"""

from __future__ import annotations

import argparse

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lrtune


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=64)
    args = parser.parse_args()
    trial = lrtune.current_trial()
    torch.manual_seed(trial.seed)
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    loader = DataLoader(TensorDataset(x[:1400], y[:1400]), batch_size=trial.batch_size or 64,
                        shuffle=True)
    model = nn.Sequential(nn.Linear(64, args.hidden), nn.ReLU(), nn.Linear(args.hidden, 10))
    with trial:
        optimizer = trial.optimizer(model.parameters())
        scheduler = trial.scheduler(optimizer, steps_per_epoch=len(loader))
        for epoch in range(trial.epochs):
            for xb, yb in loader:
                loss = nn.functional.cross_entropy(model(xb), yb)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
            with torch.no_grad():
                val_loss = nn.functional.cross_entropy(model(x[1400:]), y[1400:]).item()
            trial.report(epoch, val_loss)
        trial.complete(val_loss)


if __name__ == "__main__":
    main()
