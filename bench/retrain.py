"""Are the schedules a search chose good, or lucky? Each search's best configuration at a share
of its budget, trained again from new seeds (weights and data order).

    python bench/retrain.py --tasks digits-mlp --shares 0.25,1 --reseeds 5 --jobs 2
    python bench/retrain.py --report        # its section of docs/benchmarks.md

A search's best value is the least of many noisy trainings, so it flatters the configuration
behind it, the more so the more full-horizon runs the search made. Trained again, the choice
shows what a user gets from it. Every choice is retrained from the same seeds (a paired
comparison), none of them a seed the searches used. Reads bench/results/search_budget.jsonl;
one JSON line per (task, method, seed, share) into bench/results/search_retrain.jsonl;
resumable like bench/search_quality.py.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench import heldout  # noqa: E402
from bench.machine import run_units  # noqa: E402
from bench.search_report import DOC, load, markers, resampled_medians, write_section  # noqa: E402,E501
from lrtune.space import SearchSpace  # noqa: E402
from lrtune.spec import SpaceSpec  # noqa: E402
from lrtune_worker.tasks import get_task  # noqa: E402
from lrtune_worker.train import train_trial  # noqa: E402

RESULTS = Path(__file__).parent / "results"
RESEED = 2_000_000_000  # retraining seeds: RESEED + k (no trial of search_budget.jsonl drew one)
heldout.register()


def choice(row: dict[str, Any], share: float) -> tuple[int, float] | None:
    """The index in ``row["trials"]`` of the search's best run within ``share`` of its
    budget (all of it: to its last run, which may end past the budget, as its final value),
    and its value; None when no run had finished on the full horizon by then."""
    limit = share * row["budget"] + 1e-9 if share < 1 else float("inf")
    best, index = None, None
    for i, (spent, value) in enumerate(row["curve"]):
        if spent > limit:
            break
        if value is not None and value != best:
            best, index = value, i
    if index is None:
        return None
    trial = row["trials"][index]
    if trial["state"] != "COMPLETE" or trial["values"][-1] != best:
        raise ValueError(f"{row['task']} {row['method']} seed {row['seed']}: run {index} "
                         "is not the one that set the best value")
    return index, best


def retrain(args: tuple[dict[str, Any], float, int]) -> dict[str, Any]:
    row, share, reseeds = args
    torch.set_num_threads(1)  # one core per job, as bench/search_quality.py
    started = time.perf_counter()
    out = {"task": row["task"], "method": row["method"], "seed": row["seed"], "share": share,
           "budget": row["budget"], "reseeds": reseeds}
    chosen = choice(row, share)
    if chosen is None:
        return {**out, "number": None, "found": None, "retrained": [], "seconds": 0.0}
    index, found = chosen
    trial = row["trials"][index]
    task = get_task(row["task"])
    config = SearchSpace(SpaceSpec()).decode(trial["params"])
    values = []
    for k in range(reseeds):
        result = train_trial(task, config, row["epochs"], "val_loss", RESEED + k,
                             torch.device("cpu"))
        values.append(result.value if result.outcome == "complete" else None)
    return {**out, "number": trial["number"], "params": trial["params"], "found": found,
            "retrained": values, "seconds": round(time.perf_counter() - started, 2)}


def mean_retrained(line: dict[str, Any]) -> float:
    """A choice's mean value over its retrainings (inf: none chosen, or one diverged)."""
    values = line["retrained"]
    if not values or any(v is None for v in values):
        return float("inf")
    return statistics.mean(values)


def report(path: Path) -> str:
    """Per task: each method's choice at each share, the median over seeds of the value the
    search found and of the mean value retrained, and how far the latter lies from random
    search's final choice retrained (with the bootstrap bracket of that distance)."""
    groups: dict[str, dict[tuple[str, float], list[dict[str, Any]]]] = defaultdict(
        lambda: defaultdict(list))
    for line in load(path, ("task", "method", "seed", "share")):
        groups[line["task"]][(line["method"], line["share"])].append(line)
    out = []
    for task, cells in sorted(groups.items()):
        reference = [mean_retrained(x) for x in cells.get(("random", 1.0), [])]
        out += [f"**{task}**", "",
                "| method | share of budget | found (median) | retrained (median of means) | "
                "vs random's final choice retrained [90 % bracket] | seeds |",
                "|---|---|---|---|---|---|"]
        for (method, share), lines in sorted(cells.items(), key=lambda c: (c[0][1], c[0][0])):
            found = statistics.median(
                float("inf") if x["found"] is None else x["found"] for x in lines)
            means = [mean_retrained(x) for x in lines]
            versus = "—"
            if reference:
                low, high = distance_interval(means, reference)
                versus = (f"{statistics.median(means) - statistics.median(reference):+.4f} "
                          f"[{low:+.4f}, {high:+.4f}]")
            out.append(f"| {method} | {share:.0%} | {found:.4f} | "
                       f"{statistics.median(means):.4f} | {versus} | {len(lines)} |")
        out.append("")
    return "\n".join(out)


def distance_interval(means: list[float], reference: list[float]) -> tuple[float, float]:
    """The 5th and 95th percentiles of median(means) - median(reference) when both sets of
    seeds are drawn again with replacement (as bench/search_report.py's brackets)."""
    rng = np.random.default_rng(0)
    draws = (resampled_medians(np.array(means), rng)
             - resampled_medians(np.array(reference), rng))
    low, high = np.percentile(draws, [5, 95], method="inverted_cdf")
    return float(low), float(high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="digits-mlp")
    parser.add_argument("--methods", default="random,tpe+percentile,tpe+schedule,tpe+horizon,"
                                              "tpe+horizon2,random+horizon")
    parser.add_argument("--shares", default="0.25,1")
    parser.add_argument("--reseeds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--results", type=Path, default=RESULTS / "search_budget.jsonl")
    parser.add_argument("--out", type=Path, default=RESULTS / "search_retrain.jsonl")
    parser.add_argument("--report", action="store_true",
                        help="write its section of docs/benchmarks.md, print it, stop")
    args = parser.parse_args()
    if args.report:
        begin, end = markers(args.out.stem)
        newest = max((x["machine"] for x in load(args.out)), key=lambda m: m["when"])
        section = "\n".join([
            begin, f"_Generated by `python bench/retrain.py --report`; machine: "
            f"{newest.get('cpu')}, {newest.get('cores')} cores, torch {newest.get('torch')}, "
            f"newest run {newest.get('when')}._", "", report(args.out), end])
        write_section(DOC, section, args.out.stem)
        print(section)
        return
    tasks, methods = args.tasks.split(","), args.methods.split(",")
    shares = [float(s) for s in args.shares.split(",")]
    done = ({(x["task"], x["method"], x["seed"], x["share"])
             for x in load(args.out, ("task", "method", "seed", "share"))}
            if args.out.exists() else set())
    rows = sorted((r for r in load(args.results) if r["task"] in tasks
                   and r["method"] in methods and r["kind"] == "search"),
                  key=lambda r: (r["task"], r["seed"], methods.index(r["method"])))
    units = [(row, share, args.reseeds) for row in rows for share in shares
             if (row["task"], row["method"], row["seed"], share) not in done]
    run_units(retrain, units, args.out, args.jobs, lambda x: (
        f"{x['task']} {x['method']} seed {x['seed']} at {x['share']:.0%}: found {x['found']}, "
        f"retrained {x['retrained']}, {x['seconds']}s"))


if __name__ == "__main__":
    main()
