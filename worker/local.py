"""``lrtune tune``: a local study in this process, with a progress bar and the best code."""

from __future__ import annotations

from typing import Any

import optuna
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lrtune import optuna_internals as internals
from lrtune import study as names
from lrtune.dashboard import name_objective, update_best_note
from lrtune.lr_range import resolved
from lrtune.optimizers import OptimizerChoice
from lrtune.results import SPEC_ATTR, parse_spec, print_best
from lrtune.schedules import Schedule
from lrtune.space import TrialConfig
from lrtune.spec import StudySpec
from worker.device import pick_device
from worker.lr_find import find_bounds
from worker.runner import objective_for
from worker.tasks import get_task
from worker.train import train_trial


def run_local_study(raw: dict[str, Any], storage: str, device_name: str, baseline: bool,
                    console: Console) -> None:
    spec = parse_spec(raw)
    device = pick_device(device_name)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=storage, study_name=spec.name, load_if_exists=True,
        direction=names.direction(spec), sampler=names.make_sampler(spec.sampler),
        pruner=names.make_pruner(spec.pruner, spec.epochs))
    study.set_user_attr(SPEC_ATTR, spec.model_dump(mode="json"))
    name_objective(study, spec.objective)
    if spec.space.lr == "auto":
        with console.status("LR range test"):
            bounds = find_bounds(spec, device)
        study.set_user_attr(names.STUDY_ATTR_LR_RANGE, bounds.summary())
        each = ", ".join(f"{t.optimizer} {t.low:.2g}..{t.high:.2g}" for t in bounds.tests)
        console.print(f"LR range test: base LR searched in {bounds.low:.3g} .. "
                      f"{bounds.high:.3g} ({each})")
        spec = resolved(spec, bounds)
    console.print(f"study [bold]{spec.name}[/bold] on {storage}: {spec.n_trials} trials of "
                  f"{spec.task}, {spec.epochs} epochs, device {device}")
    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(),
               MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.fields[best]}"))
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("trials", total=spec.n_trials, best="")

        def advance(st: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            best = ""
            try:
                best = f"best {spec.objective} {st.best_value:.5g}"
            except ValueError:
                pass
            progress.update(bar, advance=1, best=best)
            update_best_note(internals.storage_of(st), internals.study_id(st))

        study.optimize(objective_for(spec, device), n_trials=spec.n_trials,
                       callbacks=[advance], catch=(RuntimeError,))
    print_best(study, spec, console)
    if baseline:
        print_baseline(spec, device, console)


def print_baseline(spec: StudySpec, device: torch.device, console: Console) -> None:
    config = TrialConfig(Schedule.build("constant"), OptimizerChoice.build("sgd", 0.01))
    result = train_trial(get_task(spec.task), config, spec.epochs, spec.objective, spec.seed,
                         device)
    console.print(f"baseline SGD lr=0.01 constant, {spec.epochs} epochs: "
                  f"{spec.objective} = {result.value}")

