"""Fused trial packing throughput: trial-epochs/s for K trials trained as one batched model,
against one trial at a time through the same trainer, and end to end through a real worker
and database.

    python bench/fused.py --tasks digits-mlp,charlm --device cpu

``linreg`` (a 10-weight model) is the host-bound case: what the worker's own per-trial work
(sampling, LR tables, data order, reports, bookkeeping) costs once the device step is nearly
free, as on a GPU. ``--db postgresql`` runs the end-to-end study on a fresh database of the
local PostgreSQL instead of SQLite.

JSON lines into bench/results/fused.jsonl (with the machine), a plot into
bench/results/fused_<device>.png. Configs are sampled from lrtune's space (momentum SGD;
cosine, step, onecycle, wsd, exponential), seeds as the worker seeds them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna  # noqa: E402
import torch  # noqa: E402

from bench.machine import machine  # noqa: E402
from bench.overhead import drop_database, fresh_database  # noqa: E402
from lrtune import study as names  # noqa: E402
from lrtune.settings import Settings  # noqa: E402
from lrtune.space import SearchSpace, TrialConfig  # noqa: E402
from lrtune.spec import SpaceSpec, StudySpec  # noqa: E402
from lrtune.store import Store  # noqa: E402
from lrtune_worker.blocking import block_size  # noqa: E402
from lrtune_worker.device import synchronize  # noqa: E402
from lrtune_worker.fused import train_pack  # noqa: E402
from lrtune_worker.loop import Worker  # noqa: E402
from lrtune_worker.tasks import get_task  # noqa: E402
from lrtune_worker.train import TrainResult, train_trial  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SPACE = {"families": ["cosine", "step", "onecycle", "wsd", "exponential"],
         "optimizers": ["momentum"], "lr": {"low": 1e-3, "high": 0.3}}
SEQUENTIAL_TRIALS = 8
E2E_TRIALS = {"digits-mlp": 64, "charlm": 8, "linreg": 256}  # 2+ packs, a few seconds or more
DEFAULT_KS = {"digits-mlp": [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024],
              "charlm": [1, 2, 4, 8, 16], "linreg": [1, 16, 256, 1024]}


def sample_configs(k: int, seed: int) -> list[TrialConfig]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = SearchSpace(SpaceSpec.model_validate(SPACE))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [space.sample(study.ask()) for _ in range(k)]


Run = Callable[[], list[TrainResult]]


def timed(run: Run, device: torch.device) -> tuple[float, list[TrainResult]]:
    synchronize(device)
    start = time.perf_counter()
    results = run()
    synchronize(device)
    return round(time.perf_counter() - start, 3), results


def best_of(runs: dict[str, Run], repeats: int, device: torch.device
            ) -> dict[str, tuple[float, list[float], list[TrainResult]]]:
    """Each run's fastest of ``repeats`` timings, all its seconds and its last results; the runs
    take turns, so a slow spell of this VM (they last seconds) falls on both sides alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    results: dict[str, list[TrainResult]] = {}
    for _ in range(repeats):
        for name, run in runs.items():
            seconds, results[name] = timed(run, device)
            times[name].append(seconds)
    return {name: (min(times[name]), times[name], results[name]) for name in runs}


def rate_row(seconds: float, times: list[float], results: list[TrainResult]
             ) -> dict[str, Any]:
    done = sum(r.epochs_run for r in results)
    return {"seconds": seconds, "all_seconds": times, "trial_epochs": done,
            "rate": round(done / seconds, 2)}


def block_setting(blocking: str, k: int) -> int:
    """``train_pack``'s ``block`` for a ``--block`` value: auto (as a worker), whole, or N."""
    return {"auto": 0, "whole": k}[blocking] if blocking in ("auto", "whole") else int(blocking)


def fused_run(task_name: str, k: int, epochs: int, device: torch.device,
              compiled: bool = False, block: int = 0) -> tuple[Run, float]:
    """The bare fused trainer, warmed up: a one-epoch run at the same K (with ``compiled``,
    the step through torch.compile; the warm-up's seconds, compiling included, returned)."""
    task = get_task(task_name)
    configs = sample_configs(k, seed=k)
    compile_after = 0 if compiled else None
    warm = configs if compiled else configs[:1]
    warmup, _ = timed(lambda: train_pack(task, warm, 1, "val_loss", list(range(len(warm))),
                                         device, compile_after=compile_after, block=block),
                      device)
    return (lambda: train_pack(task, configs, epochs, "val_loss", list(range(k)), device,
                               compile_after=compile_after, block=block)), warmup


def sequential_run(task_name: str, n: int, epochs: int, device: torch.device) -> Run:
    """``n`` trials one at a time through the sequential trainer, warmed up."""
    task = get_task(task_name)
    configs = sample_configs(n, seed=1)
    train_trial(task, configs[0], 1, "val_loss", 0, device)
    return lambda: [train_trial(task, c, epochs, "val_loss", i, device)
                    for i, c in enumerate(configs)]


def fused_rates(task_name: str, k: int, epochs: int, device: torch.device, repeats: int,
                compiled: bool = False, sequential: int = 0, blockings: Sequence[str] = ("auto",)
                ) -> list[dict[str, Any]]:
    """Bare fused trainer's rate and best value, one row per blocking; with ``sequential``
    trials, also their rate one at a time. All are timed in turn with each other."""
    task = get_task(task_name)
    data = task.data().to(device)
    runs, warmups, blocks = {}, {}, {}
    for blocking in blockings:
        block = block_setting(blocking, k)
        runs[blocking], warmups[blocking] = fused_run(task_name, k, epochs, device, compiled,
                                                      block)
        first = data.x_train[:task.info.batch_size], data.y_train[:task.info.batch_size]
        blocks[blocking] = block_size(task, first, SPACE["optimizers"][0], k, block)
    if sequential:
        runs["sequential"] = sequential_run(task_name, sequential, epochs, device)
    timings = best_of(runs, repeats, device)
    rows = []
    for blocking in blockings:
        results = timings[blocking][2]
        row = {**rate_row(*timings[blocking]), "blocking": blocking, "block": blocks[blocking],
               "best_val_loss": min((r.value for r in results if r.value is not None),
                                    default=None)}
        if compiled:
            row["warmup_seconds"] = round(warmups[blocking], 2)
        if sequential:
            seq = rate_row(*timings["sequential"])
            row.update(sequential_rate=seq["rate"], sequential_seconds=seq["all_seconds"],
                       speedup=round(row["rate"] / seq["rate"], 2))
        rows.append(row)
    return rows


def end_to_end_rate(task_name: str, k: int, epochs: int, device: torch.device,
                    compiled: bool = False, db: str = "sqlite", sampler: str = "random",
                    trials: int | None = None, block: int = 0) -> dict[str, Any]:
    """A packed study through the real worker loop and a fresh database (``db``)."""
    with tempfile.TemporaryDirectory() as tmp:
        url = fresh_database(db, Path(tmp))
        try:
            return _end_to_end(url, task_name, k, epochs, device, compiled, sampler,
                               trials or max(2 * k, E2E_TRIALS[task_name]), block)
        finally:
            drop_database(url)


def _end_to_end(url: str, task_name: str, k: int, epochs: int, device: torch.device,
                compiled: bool, sampler: str, n_trials: int, block: int) -> dict[str, Any]:
    settings = Settings(database_url=url, idle_min=0.05, fused_block=block,
                        fused_compile="always" if compiled else "never")
    store = Store(settings)
    record = store.create_study(StudySpec(name="e2e", task=task_name, epochs=epochs,
                                          n_trials=n_trials, pack=k,
                                          pruner={"name": "none"},
                                          sampler={"name": sampler, "seed": 0},
                                          space=SpaceSpec.model_validate(SPACE)), "bench")
    worker = Worker(settings, str(device), exit_when_idle=True)
    start = time.perf_counter()
    worker.run()
    seconds = time.perf_counter() - start
    trials = store.optuna_storage.get_all_trials(store.optuna_study_id(record))
    store.engine.dispose()
    done = sum(epochs_trained(t) for t in trials)
    return {"seconds": round(seconds, 3), "trials": len(trials), "trial_epochs": done,
            "rate": round(done / seconds, 2)}


def epochs_trained(trial: optuna.trial.FrozenTrial) -> int:
    """As ``TrainResult.epochs_run``: the reported epochs, and the one that diverged."""
    diverged = trial.user_attrs.get(names.ATTR_REASON) == "diverged"
    return len(trial.intermediate_values) + diverged


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.5, 4.5))
    for task_name in sorted({r["task"] for r in rows}):
        seq = [r["sequential_rate"] for r in rows
               if r["task"] == task_name and "sequential_rate" in r]
        color = None
        colors: dict[str, str] = {}  # a task's lines share a color, one per blocking
        blockings = sorted({r.get("blocking", "whole") for r in rows if r["task"] == task_name})
        for mode, style, label in (("fused", "o-", "fused"),
                                   ("fused_compiled", "s:", "fused, torch.compile")):
            for blocking in blockings:
                points = sorted((r["k"], r["rate"]) for r in rows
                                if r["task"] == task_name and r["mode"] == mode
                                and r.get("blocking", "whole") == blocking)
                if points:
                    which = f", blocks: {blocking}" if len(blockings) > 1 else ""
                    line, = ax.plot(*zip(*points, strict=True), style,
                                    color=colors.get(blocking), label=f"{task_name} {label}{which}")
                    color = colors.setdefault(blocking, line.get_color())
        if seq:
            ax.axhline(statistics.median(seq), color=color, linestyle="--",
                       label=f"{task_name} one trial at a time (median)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("trials per pack (K)")
    ax.set_ylabel("trial-epochs per second")
    ax.set_title(f"lrtune fused packing on {rows[0]['device_name']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default="digits-mlp,charlm")
    parser.add_argument("--ks", default=None, help="comma-separated K (default per task)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs per measurement; the fastest counts")
    parser.add_argument("--compile", default="both", choices=["off", "on", "both"],
                        help="fused step eager, through torch.compile, or both")
    parser.add_argument("--block", default="auto",
                        help="trials stepped at once: auto (the worker's default: by the "
                        "CPU's cache), whole (the pack), or a number; comma-separated to "
                        "compare")
    parser.add_argument("--e2e-k", type=int, default=None,
                        help="K of the end-to-end run (default: the fastest fused K above 1)")
    parser.add_argument("--db", default="sqlite", choices=["sqlite", "postgresql"],
                        help="database of the end-to-end run")
    parser.add_argument("--sampler", default="random", choices=["random", "tpe"],
                        help="sampler of the end-to-end study (tpe: lrtune's default)")
    parser.add_argument("--e2e-trials", type=int, default=None,
                        help="trials of the end-to-end study (default per task, or 2 packs)")
    parser.add_argument("--out", type=Path, default=RESULTS / "fused.jsonl")
    args = parser.parse_args()
    device = torch.device(args.device)
    info = machine()
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU ({info.get('cpu', '?')}, {info['cores']} cores)"
    rows: list[dict[str, Any]] = []

    def record(row: dict[str, Any]) -> None:
        row.update(device=args.device, device_name=device_name, epochs=args.epochs,
                   machine=info, bench="fused")
        rows.append(row)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print({k: v for k, v in row.items() if k != "machine"}, flush=True)

    for task_name in args.tasks.split(","):
        ks = [int(k) for k in args.ks.split(",")] if args.ks else DEFAULT_KS[task_name]
        bare: dict[tuple[str, str, int], float] = {}
        modes = {"off": ["fused"], "on": ["fused_compiled"],
                 "both": ["fused", "fused_compiled"]}[args.compile]
        for mode in modes:
            for k in ks:
                # the VM's speed wanders: each K has its own baseline, timed in turn with it
                try:
                    rows_k = fused_rates(task_name, k, args.epochs, device, args.repeats,
                                         mode == "fused_compiled", SEQUENTIAL_TRIALS,
                                         args.block.split(","))
                except torch.OutOfMemoryError:
                    print(f"{task_name} K={k}: out of memory, stopping", flush=True)
                    break
                for row in rows_k:
                    bare[mode, row["blocking"], k] = row["rate"]
                    record({"task": task_name, "mode": mode, "k": k, **row})
        # a pack of one trains through the one-at-a-time trainer: end to end needs K >= 2
        packed = {key: rate for key, rate in bare.items() if key[2] > 1} or bare
        best_mode, blocking, best_k = max(packed, key=lambda key: packed[key])
        e2e_k = args.e2e_k or best_k
        compiled = best_mode == "fused_compiled"
        block = block_setting(blocking, e2e_k)
        row, = fused_rates(task_name, e2e_k, args.epochs, device, args.repeats, compiled,
                           blockings=[blocking])
        # a first study imports what a worker loads lazily (the dashboard note's modules) and
        # compiles the packs' shapes, as a long-running worker has
        warmup = end_to_end_rate(task_name, e2e_k, args.epochs, device, compiled,
                                 args.db, block=block)["seconds"]
        e2e = end_to_end_rate(task_name, e2e_k, args.epochs, device, compiled, args.db,
                              args.sampler, args.e2e_trials, block)
        record({"task": task_name, "mode": "end_to_end", "k": e2e_k, "step": best_mode,
                "blocking": blocking, "db": args.db, "sampler": args.sampler, **e2e,
                "warmup_seconds": warmup, "bare_rate": row["rate"],
                "ratio_to_bare": round(e2e["rate"] / row["rate"], 3)})
    plot(latest(args.out, device_name), args.out.parent / f"fused_{args.device}.png")


def latest(path: Path, device_name: str) -> list[dict[str, Any]]:
    """Each task's rows from its newest run on this device in ``path`` (bare trainer only;
    rows of earlier code, marked ``code``, left out)."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows = [r for r in rows if r.get("device_name") == device_name and "sequential_rate" in r
            and "code" not in r]
    newest = {r["task"]: r["machine"]["when"] for r in sorted(
        rows, key=lambda r: r["machine"]["when"])}
    return [r for r in rows if r["machine"]["when"] == newest[r["task"]]]


if __name__ == "__main__":
    main()
