"""How the winning base LR moves with the horizon: the evidence for lrtune.horizon.LR_EXPONENT.

    python bench/horizon_lr.py --tasks digits-mlp,linreg --configs 40 --jobs 2
    python bench/horizon_lr.py --summary          # the shifts and the exponent they give

For each of ``--configs`` schedules and optimizers drawn from lrtune's default space, the base
LR is swept on a grid (factors of 2 around the optimizer's usual LR) at each horizon of the
default ladder (1/9, 1/3 and all of the steps, each a whole schedule). Per config and horizon
the best LR is the grid's argmin refined by a parabola in log LR; configs whose best lies on
the grid's edge at some horizon are left out (censored). The shift of a horizon is
log2(best LR there / best LR on the full horizon); the exponent ``a`` of
``best LR ~ horizon ** -a`` is the median of ``-shift / log2(fraction)``. One JSON line per
(task, config) into bench/results/horizon_lr.jsonl with the machine.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna  # noqa: E402
import torch  # noqa: E402

from bench.machine import run_units  # noqa: E402
from lrtune import horizon  # noqa: E402
from lrtune.optimizers import OptimizerChoice  # noqa: E402
from lrtune.space import SearchSpace, TrialConfig  # noqa: E402
from lrtune.spec import PrunerSpec, SpaceSpec  # noqa: E402
from lrtune_worker.tasks import get_task  # noqa: E402
from lrtune_worker.train import train_trial  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "horizon_lr.jsonl"
EPOCHS = {"digits-mlp": 9, "charlm": 5, "linreg": 9}
CENTRE = {"sgd": 0.1, "momentum": 0.05, "adam": 3e-3, "adamw": 3e-3, "rmsprop": 1e-3}
GRID = [2.0 ** k for k in range(-4, 5)]  # 1/16 .. 16 around the centre
CPU = torch.device("cpu")


def configs(n: int, seed: int) -> list[TrialConfig]:
    """``n`` schedules and optimizers of lrtune's default space (the LR is swept later)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    space = SearchSpace(SpaceSpec())
    return [space.sample(study.ask()) for _ in range(n)]


def best_log_lr(lrs: list[float], values: list[float | None]) -> float | None:
    """log2 of the grid's best LR refined by a parabola; None when it lies on the edge."""
    scored = [(v, i) for i, v in enumerate(values) if v is not None and math.isfinite(v)]
    if not scored:
        return None
    _, i = min(scored)
    if i == 0 or i == len(lrs) - 1:
        return None
    y0, y1, y2 = (values[i - 1], values[i], values[i + 1])
    x = math.log2(lrs[i])
    if y0 is None or y2 is None or not (math.isfinite(y0) and math.isfinite(y2)):
        return x
    curve = y0 - 2 * y1 + y2
    return x + (0.5 * (y0 - y2) / curve if curve > 0 else 0.0)  # grid step: 1 in log2


def unit(args: tuple[str, int, int]) -> dict[str, Any]:
    task_name, index, seed = args
    torch.set_num_threads(1)
    started = time.perf_counter()
    config = configs(index + 1, seed)[index]
    task = get_task(task_name)
    epochs = EPOCHS[task_name]
    rungs, eta = horizon.shape(PrunerSpec(name="horizon"))
    centre = CENTRE[config.optimizer.name]
    lrs = [centre * g for g in GRID]
    out: dict[str, Any] = {"task": task_name, "config": index, "seed": seed, "epochs": epochs,
                           "optimizer": config.optimizer.name,
                           "family": config.schedule.family, "lrs": lrs, "horizons": {}}
    for rung in range(rungs):
        step = horizon.Rung(rung, rungs, horizon.fraction(rung, rungs, eta))
        values = []
        for lr in lrs:
            opt = config.optimizer
            trial = TrialConfig(config.schedule, OptimizerChoice.build(
                opt.name, lr, opt.weight_decay, opt.params), config.batch_size)
            try:
                result = train_trial(task, trial, epochs, "val_loss", seed, CPU, rung=step)
                values.append(result.value if result.outcome == "complete" else None)
            except Exception:  # noqa: BLE001 - a schedule refusing this horizon
                values.append(None)
        out["horizons"][f"{step.fraction:.6g}"] = {
            "values": values, "best_log2_lr": best_log_lr(lrs, values)}
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out


def summary(path: Path) -> dict[str, Any]:
    rows = [json.loads(line) for line in path.open()] if path.exists() else []
    by_task: dict[str, Any] = {}
    for task_name in sorted({r["task"] for r in rows}):
        shifts: dict[str, list[float]] = {}
        exponents: list[float] = []
        kept = 0
        for r in (r for r in rows if r["task"] == task_name):
            best = {f: h["best_log2_lr"] for f, h in r["horizons"].items()}
            if any(v is None for v in best.values()) or "1" not in best:
                continue
            kept += 1
            for f, v in best.items():
                if f != "1":
                    shift = v - best["1"]
                    shifts.setdefault(f, []).append(shift)
                    exponents.append(-shift / math.log2(float(f)))
        by_task[task_name] = {
            "configs": sum(r["task"] == task_name for r in rows), "uncensored": kept,
            "median_shift_log2": {f: round(statistics.median(v), 3) for f, v in shifts.items()},
            "exponent_median": round(statistics.median(exponents), 3) if exponents else None}
    return by_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="digits-mlp,linreg")
    parser.add_argument("--configs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--summary", action="store_true")
    args = parser.parse_args()
    if args.summary:
        print(json.dumps(summary(args.out), indent=1))
        return
    done = {(r["task"], r["config"], r["seed"]) for r in
            (json.loads(line) for line in args.out.open())} if args.out.exists() else set()
    units = [(t, i, args.seed) for t in args.tasks.split(",") for i in range(args.configs)
             if (t, i, args.seed) not in done]  # resumable: what is recorded is not rerun
    run_units(unit, units, args.out, args.jobs, lambda line: (
        f"{line['task']} config {line['config']} ({line['optimizer']}, {line['family']}): "
        f"{line['seconds']} s"))
    print(json.dumps(summary(args.out), indent=1))


if __name__ == "__main__":
    main()
