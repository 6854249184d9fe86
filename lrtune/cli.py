"""The ``lrtune`` command. The composition root: imports service and worker lazily."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from lrtune.errors import SpecError
from lrtune.schedules import FAMILIES, Schedule, describe_catalogue

app = typer.Typer(help="lrtune: search learning-rate schedules with Optuna.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
console = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


@app.command()
def schedules(as_json: Annotated[bool, typer.Option("--json", help="machine-readable")] = False
              ) -> None:
    """List schedule families with their parameters and formulas."""
    catalogue = describe_catalogue()
    if as_json:
        typer.echo(json.dumps(catalogue, indent=2))
        return
    table = Table("family", "formula", "parameters (default, search range, unit)")
    for fam in catalogue["families"] + catalogue["modifiers"]:
        params = []
        for p in fam["params"]:
            rng = (f"{p['choices']}" if p["type"] == "categorical"
                   else f"[{p['low']}, {p['high']}]{' log' if p['log'] else ''}")
            params.append(f"{p['name']}={p['default']!r} {rng} {p['unit']}".rstrip())
        table.add_row(fam["name"], fam["formula"], "\n".join(params) or "-")
    console.print(table)


def _parse_sets(sets: list[str]) -> dict[str, dict[str, Any]]:
    groups: dict[str, dict[str, Any]] = {"params": {}, "warmup": {}, "clip": {}}
    for item in sets:
        name, sep, raw = item.partition("=")
        if not sep:
            raise SpecError("--set", f"expected NAME=VALUE, got {item!r}")
        value: Any
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        prefix, dot, rest = name.partition(".")
        if dot and prefix in ("warmup", "clip"):
            groups[prefix][rest] = value
        else:
            groups["params"][rest if dot and prefix in FAMILIES else name] = value
    return groups


@app.command()
def curve(
    family: Annotated[str, typer.Argument(help="schedule family, e.g. cosine")],
    sets: Annotated[list[str] | None, typer.Option(
        "--set", help="NAME=VALUE; warmup.NAME / clip.NAME add a modifier")] = None,
    epochs: Annotated[int, typer.Option(min=1)] = 10,
    steps_per_epoch: Annotated[int, typer.Option(min=1)] = 10,
    lr: Annotated[float, typer.Option(help="base LR")] = 0.1,
    warmup: Annotated[bool, typer.Option(help="add warmup with default parameters")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Print the LR at every step of a schedule."""
    try:
        g = _parse_sets(sets or [])
        schedule = Schedule.build(family, g["params"], g["warmup"] or ({} if warmup else None),
                                  g["clip"] or None)
        lrs = schedule.curve(epochs * steps_per_epoch, steps_per_epoch, lr)
    except SpecError as e:
        fail(str(e))
        return
    if as_json:
        typer.echo(json.dumps({"family": family, "schedule": schedule.to_dict(), "lr": lrs}))
        return
    for t, value in enumerate(lrs):
        typer.echo(f"{t}\t{value:.10g}")


@app.command()
def tune(
    task: Annotated[str, typer.Option(help="task name, see `lrtune tasks`")],
    trials: Annotated[int, typer.Option(min=1)] = 20,
    epochs: Annotated[int, typer.Option(min=1)] = 10,
    families: Annotated[str | None, typer.Option(help="comma-separated families")] = None,
    optimizers: Annotated[str | None, typer.Option(help="comma-separated optimizers")] = None,
    storage: Annotated[str, typer.Option(help="database URL")] = "sqlite:///lrtune.db",
    study: Annotated[str | None, typer.Option(help="study name (default: TASK-tune)")] = None,
    sampler: Annotated[str, typer.Option()] = "tpe",
    pruner: Annotated[str, typer.Option()] = "median",
    seed: Annotated[int, typer.Option()] = 0,
    objective: Annotated[str, typer.Option()] = "val_loss",
    baseline: Annotated[bool, typer.Option(
        help="also train SGD at constant lr=0.01 and print its value")] = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda[:N]")] = "auto",
) -> None:
    """Run a local study with a live progress bar; print the best trial and its PyTorch code."""
    from worker.local import run_local_study

    space: dict[str, Any] = {}
    if families:
        space["families"] = [f.strip() for f in families.split(",") if f.strip()]
    if optimizers:
        space["optimizers"] = [o.strip() for o in optimizers.split(",") if o.strip()]
    raw = {"name": study or f"{task}-tune", "task": task, "epochs": epochs, "n_trials": trials,
           "objective": objective, "space": space, "sampler": {"name": sampler, "seed": seed},
           "pruner": {"name": pruner}, "seed": seed}
    try:
        run_local_study(raw, storage, device, baseline, console)
    except SpecError as e:
        fail(str(e))


@app.command()
def tasks(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the training tasks this installation knows."""
    from lrtune.tasks import task_info, task_names

    infos = [task_info(n).describe() for n in task_names()]
    if as_json:
        typer.echo(json.dumps(infos, indent=2))
        return
    for info in infos:
        typer.echo(f"{info['name']:<12} {info['description']}  metrics: "
                   f"{', '.join(info['metrics'])}")  # type: ignore[arg-type]


def main() -> None:  # pragma: no cover
    sys.exit(app())
