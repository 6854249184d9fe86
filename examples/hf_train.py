"""Tune the LR schedule of a Hugging Face ``Trainer`` with lrtune.

    pip install 'lrtune[worker,transformers]'
    lrtune serve --workers 0 &                        # the API (no workers needed)
    export LRTUNE_URL=http://127.0.0.1:8000 LRTUNE_TOKEN=$(lrtune token create)
    python examples/hf_train.py --study-name my-bert

A tiny BERT, built from a config in code (nothing downloaded), classifies scikit-learn's
digits read as sequences of 64 pixel tokens. Each trial is one ``trainer.train()``:
``Trainer(optimizers=trial.hf_optimizers(...))`` steps the trial's schedule per optimizer
step, and ``LrtuneTrainerCallback`` reports each epoch's ``eval_loss``, stops a pruned trial
and completes the trial at the end.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence

import torch
from sklearn.datasets import load_digits
from torch.utils.data import Dataset
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.utils import logging as hf_logging

import lrtune
from lrtune_worker.integrations.transformers import LrtuneTrainerCallback, hf_steps_per_epoch

CLS = 17  # pixel values are tokens 0..16; the sequence starts with a [CLS] token


class Digits(Dataset):
    """Each 8x8 digit as [CLS] + 64 pixel tokens, its class as the label."""

    def __init__(self, part: slice) -> None:
        digits = load_digits()
        pixels = torch.tensor(digits.data, dtype=torch.long)[part]
        self.ids = torch.cat([torch.full((len(pixels), 1), CLS), pixels], dim=1)
        self.labels = torch.tensor(digits.target)[part]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def tiny_bert(seed: int) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=CLS + 1, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=65, num_labels=10)
    return BertForSequenceClassification(config)


def train(trial: lrtune.Trial, train_set: Digits, val_set: Digits, out: str,
          model: BertForSequenceClassification | None = None,
          callbacks: Sequence[TrainerCallback] = ()) -> LrtuneTrainerCallback:
    """Train one trial with ``Trainer`` (and more ``callbacks``); returns its callback
    (``pruned``: stopped early)."""
    model = model or tiny_bert(trial.seed)
    args = TrainingArguments(output_dir=out, num_train_epochs=trial.epochs,
                             per_device_train_batch_size=trial.batch_size or 64,
                             per_device_eval_batch_size=512, eval_strategy="epoch",
                             save_strategy="no", logging_strategy="epoch", report_to="none",
                             use_cpu=True, disable_tqdm=True, seed=trial.seed,
                             dataloader_num_workers=0)
    callback = LrtuneTrainerCallback(trial)  # monitors eval_loss: the study's val_loss
    trainer = Trainer(model=model, args=args, train_dataset=train_set, eval_dataset=val_set,
                      optimizers=trial.hf_optimizers(model, hf_steps_per_epoch(
                          args, len(train_set))),
                      callbacks=[callback, *callbacks])
    trainer.train()
    return callback


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study-id", type=int, help="train trials of this study")
    parser.add_argument("--study-name", default="hf-bert", help="create a study so named")
    parser.add_argument("--trials", type=int, default=8, help="the new study's budget")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    hf_logging.set_verbosity_warning()
    client = lrtune.Client()
    if args.study_id is None:
        study = client.create(name=args.study_name, task="external", objective="val_loss",
                              epochs=args.epochs, n_trials=args.trials,
                              space={"families": ["cosine", "onecycle", "wsd"],
                                     "optimizers": ["adamw"],
                                     "lr": {"low": 1e-4, "high": 1e-2}})
        print(f"study {study.id} created", flush=True)
    else:
        study = client.get(args.study_id)
    train_set, val_set = Digits(slice(0, 1400)), Digits(slice(1400, None))
    with tempfile.TemporaryDirectory() as out:
        for trial in study.trials():
            with trial:  # an error ends the trial FAIL
                print(f"training {trial}", flush=True)
                callback = train(trial, train_set, val_set, out)
                print(f"trial {trial.number} {'pruned' if callback.pruned else 'done'}",
                      flush=True)
    print(study.refresh(), study.best(), sep="\n")


if __name__ == "__main__":
    main()
