"""The ``lrtune`` command. The composition root: imports service and worker lazily."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from lrtune.errors import SpecError
from lrtune.lr_range import MAX_LR, MIN_LR, STEPS
from lrtune.schedules import describe_catalogue, from_settings

app = typer.Typer(help="lrtune: search learning-rate schedules with Optuna.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
console = Console()
err = Console(stderr=True)


def call(name: str, values: dict[str, Any]) -> str:
    """``name(key=value, …)``, numbers to 4 significant digits."""
    args = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v!r}"
                     for k, v in values.items())
    return f"{name}({args})"


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
                   else "fixed by you" if p["low"] is None
                   else f"[{p['low']}, {p['high']}]{' log' if p['log'] else ''}")
            params.append(f"{p['name']}={p['default']!r} {rng} {p['unit']}".rstrip())
        table.add_row(fam["name"], fam["formula"], "\n".join(params) or "-")
    console.print(table)


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
        pairs = []
        for item in sets or []:
            name, sep, raw = item.partition("=")
            if not sep:
                raise SpecError("--set", f"expected NAME=VALUE, got {item!r}")
            pairs.append((name, raw))
        schedule = from_settings(family, pairs, warmup)
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
    storage: Annotated[str | None, typer.Option(
        help="database URL (default: LRTUNE_DATABASE_URL, else sqlite:///lrtune.db)")] = None,
    resume: Annotated[bool, typer.Option(
        help="continue the study of this name with its own stored spec")] = False,
    study: Annotated[str | None, typer.Option(help="study name (default: TASK-tune)")] = None,
    sampler: Annotated[str, typer.Option()] = "tpe",
    pruner: Annotated[str, typer.Option()] = "percentile",
    seed: Annotated[int, typer.Option()] = 0,
    objective: Annotated[str, typer.Option()] = "val_loss",
    lr: Annotated[str | None, typer.Option(
        help='base LR range LOW:HIGH, or "auto" for an LR range test first')] = None,
    baseline: Annotated[bool, typer.Option(
        help="also train SGD at constant lr=0.01 and print its value")] = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda[:N]")] = "auto",
) -> None:
    """Run a local study with a live progress bar; print the best trial and its PyTorch code."""
    from lrtune.tasks import EXTERNAL
    from lrtune_worker.local import run_local_study

    if task == EXTERNAL:
        fail('task "external" is trained by your own code: create the study through the API '
             "and train it with lrtune.Client or `lrtune agent` (README: Tune your own "
             "training code)")
    space: dict[str, Any] = {}
    if families:
        space["families"] = [f.strip() for f in families.split(",") if f.strip()]
    if optimizers:
        space["optimizers"] = [o.strip() for o in optimizers.split(",") if o.strip()]
    if lr:
        space["lr"] = _lr_option(lr)
    raw = {"name": study or f"{task}-tune", "task": task, "epochs": epochs, "n_trials": trials,
           "objective": objective, "space": space, "sampler": {"name": sampler, "seed": seed},
           "pruner": {"name": pruner}, "seed": seed}
    from lrtune.settings import hide_password
    from lrtune.store.db import sqlalchemy_url

    url = sqlalchemy_url(storage or _settings().connection_url())
    shown = hide_password(url)
    try:
        code = run_local_study(raw, url, device, baseline, console, resume, shown)
    except SpecError as e:
        fail(str(e))
        return
    raise typer.Exit(code)


def _lr_option(text: str) -> Any:
    if text == "auto":
        return "auto"
    try:
        low, high = (float(part) for part in text.split(":"))
    except ValueError:
        fail(f'--lr must be "auto" or LOW:HIGH, not {text!r}')
    return {"low": low, "high": high}


@app.command("lr-find")
def lr_find(
    task: Annotated[str, typer.Option(help="task name, see `lrtune tasks`")],
    optimizers: Annotated[str, typer.Option(help="comma-separated optimizers")] = "sgd,adam",
    min_lr: Annotated[float, typer.Option(min=0.0, help="first LR of the sweep")] = MIN_LR,
    max_lr: Annotated[float, typer.Option(min=0.0, help="last LR of the sweep")] = MAX_LR,
    steps: Annotated[int, typer.Option(min=5, help="training steps in the sweep")] = STEPS,
    seed: Annotated[int, typer.Option()] = 0,
    plot_file: Annotated[Path | None, typer.Option("--plot", help="write the curve as PNG")
                         ] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda[:N]")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable")] = False,
) -> None:
    """LR range test: sweep the LR exponentially for a few steps, suggest base-LR bounds."""
    from lrtune.lr_range import combine
    from lrtune.optimizers import OPTIMIZERS
    from lrtune.plots import range_test_png
    from lrtune_worker.device import pick_device
    from lrtune_worker.lr_find import sweep
    from lrtune_worker.tasks import get_task

    names = [o.strip() for o in optimizers.split(",") if o.strip()]
    unknown = [o for o in names if o not in OPTIMIZERS]
    if unknown or not names:
        fail(f"--optimizers: unknown {unknown}; known: {sorted(OPTIMIZERS)}")
    if not 0 < min_lr < max_lr:
        fail("--min-lr must be above 0 and below --max-lr")
    try:
        chosen = get_task(task)
    except SpecError as e:
        fail(str(e))
    where = pick_device(device)
    tests = []
    for name in names:
        with err.status(f"sweeping {name} from {min_lr:g} to {max_lr:g} in {steps} steps"):
            tests.append(sweep(chosen, name, where, seed, min_lr, max_lr, steps))
    bounds = combine(tests)
    if plot_file is not None:
        plot_file.write_bytes(range_test_png(bounds, task))
    if as_json:
        typer.echo(json.dumps(bounds.to_dict() | {"plot": str(plot_file) if plot_file else None}))
        return
    table = Table(title=f"LR range test on {task} ({where})")
    for column in ("optimizer", "steepest descent", "loss minimum", "suggested range", "note"):
        table.add_column(column)
    for t in tests:
        table.add_row(t.optimizer, f"{t.steepest:.3g}", f"{t.high:.3g}",
                      f"{t.low:.3g} .. {t.high:.3g}", t.reason or "")
    console.print(table)
    console.print('space: {"lr": ' + json.dumps({"low": float(f"{bounds.low:.3g}"),
                                                 "high": float(f"{bounds.high:.3g}")}) + "}")
    if plot_file is not None:
        console.print(f"plot: {plot_file}")


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


token_app = typer.Typer(help="API tokens (stored hashed).", no_args_is_help=True)
app.add_typer(token_app, name="token")


def _settings() -> Any:
    from lrtune.settings import Settings

    return Settings()


def _logging() -> None:
    import logging

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("optuna", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@token_app.command("create")
def token_create(name: Annotated[str, typer.Option(
        help="the principal the token acts for: studies belong to it; a token made with an "
        "existing principal's name joins it (rotate: create, then revoke the old one); "
        "default: 'default', or 'workers' with --worker")] = "",
        worker: Annotated[bool, typer.Option(
            "--worker", help="a worker token: claims and reports trials of any non-external "
            "study over HTTP (lrtune worker --url, fleets) and can do nothing else")] = False,
        ) -> None:
    """Create an API token and print it once (only its hash is stored)."""
    from lrtune.store import Store
    from lrtune.store.tokens import OWNER, WORKER

    role = WORKER if worker else OWNER
    typer.echo(Store(_settings()).create_token(name or ("workers" if worker else "default"),
                                               role))


@token_app.command("list")
def token_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List tokens by id: principal, where they come from, created, revoked."""
    from lrtune.store import Store

    rows = Store(_settings()).list_tokens()
    if as_json:
        typer.echo(json.dumps([{"id": r.id, "principal": r.principal, "source": r.source,
                                "role": r.role,
                                "created_at": r.created_at.isoformat(),
                                "revoked_at": r.revoked_at.isoformat() if r.revoked_at
                                else None} for r in rows], indent=2))
        return
    table = Table("id", "principal", "role", "source", "created", "revoked")
    for r in rows:
        source = ("LRTUNE_WORKER_TOKENS" if r.role == "worker" else "LRTUNE_API_TOKENS") \
            if r.source == "env" else "token table"
        table.add_row(str(r.id), r.principal, r.role, source, f"{r.created_at:%Y-%m-%d %H:%M}",
                      f"{r.revoked_at:%Y-%m-%d %H:%M}" if r.revoked_at else "-")
    console.print(table)


@token_app.command("revoke")
def token_revoke(token_id: Annotated[int, typer.Argument(help="id from `lrtune token list`")]
                 ) -> None:
    """Revoke a token (and its dashboard logins); its principal keeps its studies."""
    from lrtune.errors import LrtuneError
    from lrtune.store import Store

    try:
        Store(_settings()).revoke_token(token_id)
    except LrtuneError as e:
        fail(str(e), 1)
    typer.echo(f"token {token_id} revoked")


@app.command()
def migrate() -> None:
    """Create or upgrade lrtune's tables (and Optuna's) on LRTUNE_DATABASE_URL."""
    from lrtune.store import Store

    settings = _settings()
    Store(settings)
    typer.echo(f"database ready: {settings.printable_url()}")


@app.command()
def serve(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8000,
    workers: Annotated[int, typer.Option(min=0, help="local worker processes to start")] = 0,
) -> None:
    """Run the API (docs at /docs, dashboard at /dashboard/) and N local workers, each
    restarted if it exits."""

    from lrtune_service.app import create_app
    from lrtune_service.server import serve as serve_http
    from lrtune_service.workers import WorkerPool

    _logging()
    settings = _settings()
    pool = WorkerPool(workers)
    app_ = create_app(settings, workers=pool)
    app_.state.store.open_pools()  # connections a constant of the settings, not of the load
    pool.start()
    err.print(f"lrtune API on http://{host}:{port}/docs, dashboard on "
              f"http://{host}:{port}/dashboard/, database {settings.printable_url()}, "
              f"{workers} local worker(s)")

    serve_http(app_, host, port, settings,
               on_stop=lambda: pool.stop(settings.heartbeat_grace))


@app.command()
def worker(
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda[:N]")] = None,
    studies: Annotated[str | None, typer.Option(help="comma-separated study ids")] = None,
    max_trials: Annotated[int | None, typer.Option(help="exit after this many trials")] = None,
    exit_when_idle: Annotated[bool, typer.Option(help="exit when no work is left")] = False,
    url: Annotated[str | None, typer.Option(
        envvar="LRTUNE_URL", show_envvar=True,
        help="take trials from the lrtune API at this URL over HTTP (trial leases, with a "
        "worker token in LRTUNE_TOKEN; no database credentials needed) instead of from the "
        "database (LRTUNE_DATABASE_URL)")] = None,
) -> None:
    """Pull trials from the database, or over HTTP with --url, and train them until stopped
    (SIGTERM hands back)."""
    from lrtune_worker.loop import Worker

    _logging()
    settings = _settings()
    only = {int(s) for s in studies.split(",")} if studies else None
    source = None
    if url:
        from lrtune_worker.remote import LeaseSource

        token = settings.token.get_secret_value()
        if not token:
            fail("lrtune worker --url needs a worker token in LRTUNE_TOKEN (`lrtune token "
                 "create --worker`, or one of the API's LRTUNE_WORKER_TOKENS)")
        source = LeaseSource.connect(url, token, settings.max_body_bytes)
    w = Worker(settings, device, only, max_trials, exit_when_idle, source)
    w.install_signals()
    w.run()


@app.command()
def dashboard(host: Annotated[str, typer.Option()] = "127.0.0.1",
              port: Annotated[int, typer.Option()] = 8080) -> None:
    """Run optuna-dashboard alone on the same database."""
    from lrtune_service.app import standalone_dashboard
    from lrtune_service.server import serve as serve_http

    _logging()
    settings = _settings()
    err.print(f"optuna-dashboard on http://{host}:{port}/dashboard/")
    serve_http(standalone_dashboard(settings), host, port, settings)


def _client() -> Any:
    from lrtune.client import Client

    settings = _settings()
    return Client(settings.url, settings.token.get_secret_value())


def _api(call: Any) -> Any:
    from lrtune.client import ClientError

    try:
        return call()
    except ClientError as e:
        fail(str(e), 1)


@app.command()
def submit(spec_file: Annotated[typer.FileText, typer.Argument(help="study spec JSON")],
           name: Annotated[str | None, typer.Option(help="override the spec's name")] = None
           ) -> None:
    """Submit a study spec to the API (LRTUNE_URL, LRTUNE_TOKEN); prints the study id."""
    try:
        spec = json.load(spec_file)
    except json.JSONDecodeError as e:
        fail(f"{spec_file.name}: not JSON: {e}")
    if name:
        spec["name"] = name
    study = _api(lambda: _client().submit(spec))
    settings = _settings()
    err.print(f"study {study['id']} ({study['name']}) submitted: "
              f"{settings.url}/studies/{study['id']}  dashboard: "
              f"{settings.url}{study['dashboard']}")
    typer.echo(study["id"])


@app.command()
def watch(study_id: int, interval: Annotated[float, typer.Option(min=0.1)] = 1.0) -> None:
    """Show a live progress bar until the study is no longer running."""
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    client = _client()
    study = _api(lambda: client.study(study_id))
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"))
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task(study["name"], total=study["progress"]["n_trials"], info="")
        while True:
            study = _api(lambda: client.study(study_id))
            p = study["progress"]
            best = study["best"]
            info = (f"running {p['running']} pruned {p['pruned']} failed {p['failed']}"
                    + (f" best {best['value']:.5g}" if best else ""))
            progress.update(bar, completed=p["n_done"], info=info)
            if study["status"] != "running":
                break
            time.sleep(interval)
    console.print(f"study {study_id}: {study['status']}")
    if study["best"]:
        b = study["best"]
        console.print(f"best trial #{b['number']}: {b['value']:.6g}")
        schedule, o = b["schedule"], b["optimizer"]
        if schedule is not None:
            modifiers = [f" + {call(m, schedule[m])}" for m in ("warmup", "clip") if schedule[m]]
            console.print(f"  schedule:  {call(schedule['family'], schedule['params'])}"
                          + "".join(modifiers))
            decay = {"weight_decay": o["weight_decay"]} if o["weight_decay"] else {}
            optimizer = call(o["name"], {"lr": o["lr"], **o["params"], **decay})
            console.print(f"  optimizer: {optimizer}")
        console.print(f"  code: lrtune best {study_id} --code pytorch")


@app.command()
def best(study_id: int,
         code: Annotated[str | None, typer.Option(help="pytorch | keras")] = None) -> None:
    """Print the best trial (JSON), or its code with --code."""
    client = _client()
    if code:
        if code not in ("pytorch", "keras"):
            fail("--code must be pytorch or keras")
        typer.echo(_api(lambda: client.best_code(study_id, code)), nl=False)
        return
    typer.echo(json.dumps(_api(lambda: client.best(study_id)), indent=2))


@app.command()
def plot(study_id: int,
         out: Annotated[Path, typer.Option(help="folder for the PNG files")] = Path(".")
         ) -> None:
    """Write the study's LR, loss and by-family plots as PNG files."""
    client = _client()
    out.mkdir(parents=True, exist_ok=True)
    for kind in ("lr", "loss", "families"):
        path = out / f"study{study_id}_{kind}.png"
        path.write_bytes(_api(lambda kind=kind: client.plot(study_id, kind)))
        typer.echo(path)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def agent(ctx: typer.Context, study_id: int,
          count: Annotated[int | None, typer.Option(
              min=1, help="trials to run, then exit (default: until the study ends)")] = None
          ) -> None:
    """Run your training script once per trial of an external study:
    `lrtune agent STUDY_ID -- python train.py ARGS…` (LRTUNE_URL, LRTUNE_TOKEN). The script
    gets its trial from `lrtune.current_trial()`."""
    from lrtune.agent import run_agent

    command = list(ctx.args)
    if not command:
        fail("give the command to run after --, e.g. lrtune agent 3 -- python train.py")
    _logging()
    try:
        ran = _api(lambda: run_agent(_client(), study_id, command, count))
    except KeyboardInterrupt:
        err.print("agent interrupted")
        raise typer.Exit(130) from None
    err.print(f"agent ran {ran} trial(s) of study {study_id}")
