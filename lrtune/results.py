"""Reading a study back: its spec, its best trial decoded, and that trial as code."""

from __future__ import annotations

from typing import Any

import optuna
from pydantic import ValidationError
from rich.console import Console

from lrtune import study as names
from lrtune.errors import SpecError
from lrtune.export import export
from lrtune.space import SearchSpace, TrialConfig
from lrtune.spec import StudySpec, explain

SPEC_ATTR = names.STUDY_ATTR_SPEC


def parse_spec(raw: dict[str, Any]) -> StudySpec:
    try:
        spec = StudySpec.model_validate(raw)
    except ValidationError as e:
        raise SpecError(*explain(e.errors()[0])) from None
    SearchSpace(spec.space, names.direction(spec))
    return spec


def best_config(study: optuna.Study, spec: StudySpec) -> tuple[optuna.trial.FrozenTrial,
                                                                TrialConfig]:
    best = study.best_trial
    return best, SearchSpace(spec.space, names.direction(spec)).decode(best.params)


def print_best(study: optuna.Study, spec: StudySpec, console: Console) -> None:
    counts = {s.name: 0 for s in optuna.trial.TrialState}
    for t in study.trials:
        counts[t.state.name] += 1
    console.print("trials: " + ", ".join(f"{k} {v}" for k, v in counts.items() if v))
    try:
        best, config = best_config(study, spec)
    except ValueError:
        console.print("[red]no trial completed[/red]")
        return
    console.print(f"best trial #{best.number}: {spec.objective} = {best.value:.6g}")
    console.print(f"  schedule: {config.schedule.to_dict()}")
    console.print(f"  optimizer: {config.optimizer.to_dict()}")
    spe = int(best.user_attrs.get(names.ATTR_STEPS_PER_EPOCH, 1))
    code = export(config, "pytorch", spec.epochs, spe,
                  f"{spec.task} {spec.objective} {best.value:.6g}",
                  objective=spec.objective, direction=names.direction(spec))
    console.print("\n# PyTorch")
    console.file.write(code)
    console.file.flush()

