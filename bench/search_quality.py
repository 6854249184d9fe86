"""Does lrtune find better schedules? Textbook settings, random search, TPE and TPE with a
pruner on the same tasks, at equal budget in trial-epochs, over several seeds.

    python bench/search_quality.py --tasks digits-mlp,charlm --seeds 5 --jobs 2
    python bench/search_report.py          # table, plots and pruning evidence from the results

Resumable: a (task, method, seed, budget) already in ``--out`` is not run again, so a long
run can span several sittings; units go seed by seed, every method of a seed before the next.
The horizon ladder's runs (``tpe+horizon``, ``random+horizon``) cost their steps' share of an
epoch; the ladder is given the ``n_trials`` its expected cost per run fits in the budget.

Every run trains for real with lrtune's trainer and samples lrtune's default search space
(all families, all optimizers, base LR 1e-4..1) with lrtune's own sampler and pruner settings.
One JSON line per (task, method, seed) into bench/results/search_quality.jsonl, with the
best-so-far curve against trial-epochs spent and, for the searches, every trial's per-epoch
values (used for the pruning analysis).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna  # noqa: E402
import torch  # noqa: E402
from optuna.distributions import distribution_to_json  # noqa: E402

from bench import heldout  # noqa: E402
from bench.machine import run_units  # noqa: E402
from lrtune import horizon  # noqa: E402
from lrtune.attrs import ATTR_HORIZON, ATTR_STEPS_PER_EPOCH  # noqa: E402
from lrtune.optimizers import OptimizerChoice  # noqa: E402
from lrtune.schedules import Schedule  # noqa: E402
from lrtune.space import TrialConfig  # noqa: E402
from lrtune.spec import PrunerSpec, StudySpec  # noqa: E402
from lrtune.study import direction, make_pruner, make_sampler  # noqa: E402
from lrtune_worker.runner import run_trial, trial_seed  # noqa: E402
from lrtune_worker.tasks import get_task  # noqa: E402
from lrtune_worker.train import steps_per_epoch, train_trial  # noqa: E402

RESULTS = Path(__file__).parent / "results"
# (epochs per trial, budget in trial-epochs per search) by task
BUDGETS = {"digits-mlp": (10, 400), "charlm": (5, 360), "linreg": (5, 100),
           "cancer-mlp": (10, 400), "synth-mlp": (10, 400),
           "synth6-mlp": (10, 400)}  # held out (bench/heldout.py)
SEARCHES = {"random": ("random", "none"), "tpe": ("tpe", "none"),
            "tpe+hyperband": ("tpe", "hyperband"), "tpe+percentile": ("tpe", "percentile"),
            "tpe+schedule": ("tpe", "schedule"), "tpe+horizon": ("tpe", "horizon"),
            "random+horizon": ("random", "horizon"), "tpe+horizon2": ("tpe", "horizon")}
# A method's own ladder shape: "tpe+horizon2" is the ladder with two rungs (1/9 and all of the
# steps, eta 9), chosen on digits-mlp after the ladder's mends (docs/benchmarks.md)
SHAPES = {"tpe+horizon2": {"rungs": 2, "eta": 9}}
CPU = torch.device("cpu")
LADDER: dict[str, int] = {}  # the ladder's shape when not lrtune's default (--rungs, --eta)
heldout.register()


def textbook(spe: int) -> dict[str, TrialConfig]:
    """What tutorials print. Schedules ride on SGD(lr=0.01, momentum=0.9), as in the examples
    of torch.optim's documentation; fractions are of the whole run."""
    sgd = OptimizerChoice.build("sgd", 0.01)
    momentum = OptimizerChoice.build("momentum", 0.01, params={"momentum": 0.9})
    build = Schedule.build
    return {
        "SGD lr=0.01 constant": TrialConfig(build("constant"), sgd),
        "ExponentialLR(gamma=0.9)": TrialConfig(build("exponential", {"gamma": 0.9}), momentum),
        "StepLR(30%, gamma=0.1)": TrialConfig(
            build("step", {"step_size": 0.3, "gamma": 0.1}), momentum),
        "MultiStepLR(30/60/90%, gamma=0.1)": TrialConfig(
            build("multistep", {"first": 0.3, "interval": 0.3, "gamma": 0.1}), momentum),
        "CosineAnnealingLR(eta_min=0.001)": TrialConfig(
            build("cosine", {"eta_min_ratio": 0.1}), momentum),
        "inverse time, k=0.005/step": TrialConfig(
            build("inverse_time", {"decay_rate": 0.005 * spe}), momentum),
        "Adam lr=0.001 constant": TrialConfig(build("constant"),
                                              OptimizerChoice.build("adam", 0.001)),
    }


def run_textbook(task_name: str, name: str, epochs: int, seed: int) -> dict[str, Any]:
    task = get_task(task_name)
    spe = steps_per_epoch(len(task.data().x_train), task.info.batch_size)
    config = textbook(spe)[name]
    result = train_trial(task, config, epochs, "val_loss", seed * 1_000_003, CPU)
    value = result.value if result.outcome == "complete" else None
    return {"kind": "textbook", "method": name, "best": value, "spent": result.epochs_run,
            "curve": [[result.epochs_run, value]], "values": result.values}


def run_search(task_name: str, method: str, epochs: int, budget: int, seed: int
               ) -> dict[str, Any]:
    sampler, pruner = SEARCHES[method]
    # Independent draws per method: with one seed, TPE's random start-up trials would be
    # random search's first trials, and the methods would share their luck.
    seed = 1000 * (list(SEARCHES).index(method) + 1) + seed
    name = f"{task_name}-{method.replace('+', '-')}-{seed}"
    ladder = pruner == "horizon"
    shaped = {"name": pruner, **(LADDER if ladder else {}), **SHAPES.get(method, {})}
    n_trials = ladder_trials(budget, epochs, PrunerSpec(**shaped)) if ladder else 10_000
    spec = StudySpec.model_validate({
        "name": name, "task": task_name, "epochs": epochs, "n_trials": n_trials,
        "sampler": {"name": sampler, "seed": seed}, "pruner": shaped, "seed": seed})
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=direction(spec), sampler=make_sampler(spec.sampler),
                                pruner=make_pruner(spec.pruner, epochs))
    spent: float = 0
    curve, trials = [], []
    while spent < budget and len(study.trials) < n_trials:
        if ladder:  # the runs left as the budget left buys them, at the cost per run so far
            runs = len(study.trials)
            per_run = spent / runs if runs >= 10 else budget / n_trials
            left = max(1, round((budget - spent) / per_run))
            rung = horizon.next_rung(horizon.runs_of(study.get_trials(deepcopy=False)),
                                     spec.pruner, study.direction, left, n_trials,
                                     horizon.lr_bounds(spec))
            trial = horizon.start(study, rung)
        else:
            trial = study.ask()
        outcome = run_trial(trial, spec, CPU)
        if outcome.state == optuna.trial.TrialState.COMPLETE:
            study.tell(trial, outcome.value)
        else:
            study.tell(trial, state=outcome.state)
        result = outcome.result
        if ladder and result is not None:
            spe = int(study.trials[-1].user_attrs[ATTR_STEPS_PER_EPOCH])
            steps = rung.steps(epochs * spe)
            spent += min(result.epochs_run * spe, steps) / spe  # a diverged run stops early
        elif result is None:  # failed: charged its whole horizon (a ladder's run, its rung's)
            spent += rung.fraction * epochs if ladder else epochs
        else:
            spent += result.epochs_run
        complete = [t.value for t in study.trials
                    if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]
        curve.append([spent, min(complete) if complete else None])
        trials.append({"number": trial.number, "seed": trial_seed(spec, trial),
                       "horizon": study.trials[-1].user_attrs.get(ATTR_HORIZON),
                       "family": trial.params.get("schedule"), "params": trial.params,
                       "distributions": {k: distribution_to_json(d)
                                         for k, d in trial.distributions.items()},
                       "optimizer": trial.params.get("optimizer"),
                       "state": outcome.state.name, "reason": outcome.reason,
                       "values": result.values if result else []})
    return {"kind": "search", "method": method, "sampler_seed": seed, "best": curve[-1][1],
            "spent": spent, "curve": curve, "trials": trials}


def ladder_trials(budget: int, epochs: int, spec: PrunerSpec) -> int:
    """The ladder's ``n_trials`` for a budget: runs at the share of an epoch successive
    halving spends on average (each rung costs alike: eta times the runs at 1/eta the
    steps)."""
    rungs, eta = horizon.shape(spec)
    counts = [eta ** (rungs - 1 - k) for k in range(rungs)]
    cost = sum(c * horizon.fraction(k, rungs, eta) for k, c in enumerate(counts)) / sum(counts)
    return round(budget / (epochs * cost))


def unit(args: tuple[str, str, str, int, int, int]) -> dict[str, Any]:
    kind, task_name, method, epochs, budget, seed = args
    torch.set_num_threads(1)  # one core per job: small models scale better across jobs
    started = time.perf_counter()
    out = (run_textbook(task_name, method, epochs, seed) if kind == "textbook"
           else run_search(task_name, method, epochs, budget, seed))
    return {"task": task_name, "seed": seed, "epochs": epochs, "budget": budget,
            "lr_exponent": horizon.LR_EXPONENT, "ladder": LADDER | SHAPES.get(method, {}),
            "seconds": round(time.perf_counter() - started, 2), **out}


def recorded(path: Path) -> set[tuple[str, str, int, int]]:
    """(task, method, seed, budget) of the runs already in ``path``."""
    if not path.exists():
        return set()
    rows = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return {(r["task"], r["method"], r["seed"], r["budget"]) for r in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="digits-mlp,charlm")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--seed-from", type=int, default=0, help="the first seed (a run "
                        "split across machines or sittings)")
    parser.add_argument("--methods", default="textbook," + ",".join(SEARCHES))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "search_quality.jsonl")
    parser.add_argument("--lr-exponent", type=float, default=None,
                        help="the horizon ladder's LR correction law, instead of lrtune's "
                             "(for tuning it: results go to their own --out)")
    parser.add_argument("--rungs", type=int, default=None, help="the ladder's, for tuning")
    parser.add_argument("--eta", type=int, default=None, help="the ladder's, for tuning")
    args = parser.parse_args()
    LADDER.update({k: v for k, v in (("rungs", args.rungs), ("eta", args.eta)) if v})
    if args.lr_exponent is not None:
        horizon.LR_EXPONENT = args.lr_exponent  # the pool's processes fork after this
    methods = args.methods.split(",")
    units = []
    for task_name in args.tasks.split(","):
        epochs, budget = BUDGETS[task_name]
        for seed in range(args.seed_from, args.seeds):
            if "textbook" in methods:
                units += [("textbook", task_name, name, epochs, budget, seed)
                          for name in textbook(1)]
            units += [("search", task_name, m, epochs, budget, seed)
                      for m in methods if m in SEARCHES]
    done = recorded(args.out)
    units = [u for u in units if (u[1], u[2], u[5], u[4]) not in done]
    run_units(unit, units, args.out, args.jobs, lambda line: (
        f"{line['task']} {line['method']} seed {line['seed']}: best {line['best']} in "
        f"{line['spent']} trial-epochs, {line['seconds']}s"))


if __name__ == "__main__":
    main()
