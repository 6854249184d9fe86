"""``lrtune tune``: a local study in this process, with a progress bar and the best code."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lrtune import horizon
from lrtune import optuna_internals as internals
from lrtune import study as names
from lrtune.dashboard import name_objective, update_best_note
from lrtune.errors import SpecError
from lrtune.lr_range import resolved
from lrtune.optimizers import OptimizerChoice
from lrtune.results import SPEC_ATTR, parse_spec, print_best
from lrtune.schedules import Schedule
from lrtune.space import TrialConfig
from lrtune.spec import StudySpec
from lrtune_worker.device import pick_device
from lrtune_worker.lr_find import find_bounds
from lrtune_worker.runner import objective_for, run_trial
from lrtune_worker.tasks import get_task
from lrtune_worker.train import train_trial


def spec_differences(old: StudySpec, new: StudySpec) -> list[str]:
    """``field: old -> new`` for each field (dotted) two specs disagree on."""
    def flat(value: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(value, dict):
            return {k: v for key, item in value.items()
                    for k, v in flat(item, f"{prefix}{key}.").items()}
        return {prefix.rstrip("."): value}

    before, after = flat(old.model_dump(mode="json")), flat(new.model_dump(mode="json"))
    return [f"{key}: {before.get(key)!r} -> {after.get(key)!r}"
            for key in sorted(set(before) | set(after)) if before.get(key) != after.get(key)]


def existing_spec(storage: str, name: str) -> StudySpec | None:
    """The spec of the study ``name`` a previous ``tune`` left in ``storage``, if any."""
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None
    raw = study.user_attrs.get(SPEC_ATTR)
    if raw is None:
        raise SpecError("study", f"a study named {name!r} exists in this database and lrtune "
                        "did not make it: choose another name with --study NAME")
    return parse_spec(raw)


def run_local_study(raw: dict[str, Any], storage: str, device_name: str, baseline: bool,
                    console: Console, resume: bool = False, shown: str | None = None) -> int:
    """Run (or continue) the study to its ``n_trials``; the exit code: 1 when a trial
    failed (a task error, not a divergence), else 0. A study of the same name continues when
    its spec is the same; with another spec it is refused (SpecError naming the
    differences), unless ``resume`` (which keeps the stored spec)."""
    spec = parse_spec(raw)
    shown = shown or storage
    earlier = existing_spec(storage, spec.name)
    if earlier is not None:
        differences = spec_differences(earlier, spec)
        if differences and not resume:
            raise SpecError("study", f"a study named {spec.name!r} exists in {shown} with "
                            f"another spec ({'; '.join(differences)}). Start a new study "
                            "with --study NEW_NAME, or continue this one, with its own "
                            "spec, with --resume")
        spec = earlier
    device = pick_device(device_name)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=storage, study_name=spec.name, load_if_exists=True,
        direction=names.direction(spec), sampler=names.make_sampler(spec.sampler),
        pruner=names.make_pruner(spec.pruner, spec.epochs))
    study.set_user_attr(SPEC_ATTR, spec.model_dump(mode="json"))
    name_objective(study, spec.objective)
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    done = len(study.get_trials(deepcopy=False, states=finished))
    failed_before = len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
    if earlier is not None:
        console.print(f"continuing study [bold]{spec.name}[/bold]: {done} of "
                      f"{spec.n_trials} trials done")
    if spec.space.lr == "auto" and done < spec.n_trials:
        with console.status("LR range test"):
            bounds = find_bounds(spec, device)
        study.set_user_attr(names.STUDY_ATTR_LR_RANGE, bounds.summary())
        each = ", ".join(f"{t.optimizer} {t.low:.2g}..{t.high:.2g}" for t in bounds.tests)
        console.print(f"LR range test: base LR searched in {bounds.low:.3g} .. "
                      f"{bounds.high:.3g} ({each})")
        spec = resolved(spec, bounds)
    console.print(f"study [bold]{spec.name}[/bold] on {shown}: {spec.n_trials} trials of "
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

        progress.update(bar, completed=done)
        if done < spec.n_trials and spec.pruner.name == "horizon":
            climb_ladder(study, spec, device, spec.n_trials - done, advance)
        elif done < spec.n_trials:
            study.optimize(objective_for(spec, device), n_trials=spec.n_trials - done,
                           callbacks=[advance], catch=(RuntimeError,))
    print_best(study, spec, console)
    if baseline:
        print_baseline(spec, device, console)
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))[failed_before:]
    if failed:
        reasons = sorted({str(t.user_attrs.get(names.ATTR_REASON, "?")) for t in failed})
        console.print(f"[red]{len(failed)} trial(s) failed[/red]: {'; '.join(reasons[:3])}")
        return 1
    return 0


def climb_ladder(study: optuna.Study, spec: StudySpec, device: torch.device, left: int,
                 callback: Callable[[optuna.Study, FrozenTrial], None]) -> None:
    """``left`` runs of a horizon ladder, each on the rung ``horizon.next_rung`` gives (as
    lrtune's workers claim them; ``optimize()`` has no say in what a trial runs)."""
    bounds = horizon.lr_bounds(spec)
    for slots_left in range(left, 0, -1):
        rung = horizon.next_rung(horizon.runs_of(study.get_trials(deepcopy=False)),
                                 spec.pruner, study.direction, slots_left, spec.n_trials, bounds)
        trial = horizon.start(study, rung)
        outcome = run_trial(trial, spec, device)
        study.tell(trial, outcome.value if outcome.state == TrialState.COMPLETE else None,
                   state=outcome.state)
        callback(study, study.get_trials(deepcopy=False)[-1])


def print_baseline(spec: StudySpec, device: torch.device, console: Console) -> None:
    config = TrialConfig(Schedule.build("constant"), OptimizerChoice.build("sgd", 0.01))
    result = train_trial(get_task(spec.task), config, spec.epochs, spec.objective, spec.seed,
                         device)
    console.print(f"baseline SGD lr=0.01 constant, {spec.epochs} epochs: "
                  f"{spec.objective} = {result.value}")

