"""Log each trial of your own loop as a Weights & Biases run, grouped by study.

    pip install 'lrtune[worker,wandb]'
    lrtune serve --workers 0 &                        # the API (no workers needed)
    export LRTUNE_URL=http://127.0.0.1:8000 LRTUNE_TOKEN=$(lrtune token create)
    WANDB_MODE=offline python examples/wandb_train.py --project lrtune-digits

The loop is examples/own_loop.py's; ``with log_trial(trial):`` in place of ``with trial:``
makes each trial one run: its params, schedule and optimizer as the config, each epoch's
``value``, ``lr`` and ``val_acc``, and how it ended in the summary.

lrtune's own workers log their trials the same way when ``LRTUNE_WANDB_PROJECT`` is set in
their environment: ``LRTUNE_WANDB_PROJECT=lrtune-digits lrtune serve --workers 2``.
"""

from __future__ import annotations

import argparse

from own_loop import data, train  # examples/own_loop.py, beside this file

import lrtune
from lrtune_worker.integrations.wandb import log_trial


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study-id", type=int, help="train trials of this study")
    parser.add_argument("--study-name", default="wandb-loop", help="create a study so named")
    parser.add_argument("--project", default="lrtune", help="the W&B project")
    parser.add_argument("--trials", type=int, default=8, help="the new study's budget")
    parser.add_argument("--epochs", type=int, default=5)
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
        with log_trial(trial, project=args.project) as run:  # ends the trial as `with trial:`
            print(f"training {trial} as W&B run {run.run.id}", flush=True)
            train(trial, train_set, val_set)
    print(study.refresh(), study.best(), sep="\n")


if __name__ == "__main__":
    main()
