"""Tables, plots and pruning evidence from bench/results/search_quality.jsonl.

    python bench/search_report.py [--results FILE] [--doc docs/benchmarks.md]

Writes the results file's section of docs/benchmarks.md (between the markers named after the
file: ``<!-- search-quality:begin -->`` for search_quality.jsonl) and PNGs of best-so-far
against trial-epochs into bench/results/ (``<file stem>_<task>.png``). The pruning analysis
replays the random-search trials (full curves, nothing pruned) through Optuna's real pruners,
in their order, as a study would have.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import warnings
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import optuna  # noqa: E402
from optuna.distributions import json_to_distribution  # noqa: E402

from lrtune.spec import PrunerSpec  # noqa: E402
from lrtune.study import make_pruner  # noqa: E402

RESULTS = Path(__file__).parent / "results"
DOC = Path(__file__).parents[1] / "docs" / "benchmarks.md"
SEARCHES = ["random", "tpe", "tpe+hyperband", "tpe+percentile", "tpe+schedule", "tpe+horizon",
            "tpe+horizon2",
            "random+horizon"]
TOP = 0.2  # "a winner": in the best fifth of its run's trials by final value
PRUNERS = ["median", "percentile", "schedule"]
TIMING = {"early decay": ("exponential", "inverse_time", "polynomial"),
          "late decay": ("cosine", "step", "multistep", "wsd", "onecycle", "plateau")}
STAMP = datetime(2026, 1, 1)
RESAMPLES = 1000  # bootstrap draws of the seeds for a reach's interval


def load(path: Path, keys: tuple[str, ...] = ("task", "method", "seed")
         ) -> list[dict[str, Any]]:
    """The latest line for each value of ``keys``."""
    latest: dict[tuple[Any, ...], dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        latest[tuple(row[k] for k in keys)] = row
    return list(latest.values())


def by_method(rows: list[dict[str, Any]], task: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["task"] == task:
            out[row["method"]].append(row)
    return out


def best_at(curve: list[list[Any]], spent: float) -> float | None:
    """Best value found within ``spent`` trial-epochs."""
    best = None
    for x, value in curve:
        if x > spent:
            break
        best = value if value is not None else best
    return best


def median_curve(runs: list[dict[str, Any]], grid: list[float]) -> list[float | None]:
    out: list[float | None] = []
    for x in grid:
        values = [v for run in runs if (v := best_at(run["curve"], x)) is not None]
        out.append(statistics.median(values) if len(values) == len(runs) else None)
    return out


def reach(runs: list[dict[str, Any]], target: float, budget: int) -> float | None:
    """Trial-epochs the median run needs to be at least as good as ``target`` (whole
    trial-epochs: a horizon ladder's runs spend fractions). Up to the last run's end: a
    search stops at the first trial that reaches the budget, so it may end a little past it,
    and its final value is from there."""
    end = max([budget] + [math.ceil(r["spent"]) for r in runs])
    grid = list(range(1, end + 1))
    for x, value in zip(grid, median_curve(runs, grid), strict=True):
        if value is not None and value <= target:
            return x
    return None


def reach_interval(runs: list[dict[str, Any]], randoms: list[dict[str, Any]], budget: int,
                   resamples: int = RESAMPLES) -> tuple[float, float]:
    """The 5th and 95th percentiles of ``reach`` as a share of ``budget`` when the seeds of
    the method and of random search (whose final median is the target) are drawn again
    with replacement; ``inf``: a draw that never reaches it. How much the seeds can say."""
    end = max([budget] + [math.ceil(r["spent"]) for r in runs])
    grid = list(range(1, end + 1))
    curves = np.array([[np.nan if (v := best_at(r["curve"], x)) is None else v for x in grid]
                       for r in runs])
    finals = np.array([np.inf if r["best"] is None else r["best"] for r in randoms])
    rng = np.random.default_rng(0)
    targets = resampled_medians(finals, rng, resamples)
    # a grid point counts only when every drawn run has a full result there (as median_curve)
    medians = resampled_medians(curves, rng, resamples)
    reached = medians <= targets[:, None]  # NaN compares False
    shares = np.where(reached.any(axis=1), (reached.argmax(axis=1) + 1) / budget, np.inf)
    low, high = np.percentile(shares, [5, 95], method="inverted_cdf")  # inf: no blending
    return float(low), float(high)


def resampled_medians(values: np.ndarray, rng: np.random.Generator, resamples: int = RESAMPLES
                      ) -> np.ndarray:
    """The medians of ``resamples`` draws with replacement of ``values``' rows (the seeds): one
    median per draw, of each column where ``values`` has columns."""
    return np.median(values[rng.integers(len(values), size=(resamples, len(values)))], axis=1)


def share(value: float | None) -> str:
    return "never" if value is None else f"{value:.0%}"


def fmt(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {std:.4f}"


def task_table(task: str, methods: dict[str, list[dict[str, Any]]]) -> tuple[str, dict[str, Any]]:
    lines = ["| method | best | mean ± std | median | trial-epochs (mean) | seeds |",
             "|---|---|---|---|---|---|"]
    medians: dict[str, float] = {}
    order = [m for m in methods if m not in SEARCHES] + [m for m in SEARCHES if m in methods]
    for method in order:
        runs = methods[method]
        finals = [r["best"] if r["best"] is not None else float("inf") for r in runs]
        finite = [v for v in finals if v != float("inf")]
        medians[method] = statistics.median(finals)
        spent = statistics.mean(r["spent"] for r in runs)
        diverged = len(finals) - len(finite)
        note = f" ({diverged} diverged)" if diverged else ""
        lines.append(f"| {method} | {min(finals):.4f} | {fmt(finite) if finite else '—'}{note}"
                     f" | {medians[method]:.4f} | {spent:.0f} | {len(runs)} |")
    textbook = {m: v for m, v in medians.items() if m not in SEARCHES}
    facts: dict[str, Any] = {"medians": medians}
    if "random" in medians:
        for method in SEARCHES[1:]:
            if method in medians:
                worst_gap = min(textbook.values()) - medians[method] if textbook else None
                facts[method] = {
                    "beats_every_textbook": all(medians[method] < v for v in textbook.values()),
                    "margin_to_best_textbook": worst_gap,
                    "beats_random_median": medians[method] < medians["random"]}
        budget = methods["random"][0]["budget"]
        for method in SEARCHES[1:]:
            if method in methods:
                needed = reach(methods[method], medians["random"], budget)
                facts[method]["reaches_random_final"] = needed
                facts[method]["fraction_of_random"] = needed / budget if needed else None
                facts[method]["reach_interval"] = [  # None: past the budget
                    v if math.isfinite(v) else None
                    for v in reach_interval(methods[method], methods["random"], budget)]
    return "\n".join(lines), facts


# -- pruning: is the default pruner biased against schedules that decay late? -------------

def frozen(t: dict[str, Any], values: list[float],
           state: optuna.trial.TrialState) -> optuna.trial.FrozenTrial:
    dists = {k: json_to_distribution(d) for k, d in t["distributions"].items()}
    running = state == optuna.trial.TrialState.RUNNING
    return optuna.trial.FrozenTrial(
        number=t["number"], trial_id=t["number"], state=state,
        value=values[-1] if state == optuna.trial.TrialState.COMPLETE else None, values=None,
        datetime_start=STAMP, datetime_complete=None if running else STAMP,
        params=t["params"], distributions=dists,
        user_attrs={}, system_attrs={}, intermediate_values=dict(enumerate(values)))


def replay(trials: list[dict[str, Any]], epochs: int, pruner: str) -> dict[int, int]:
    """Trial number -> epoch it would have been pruned at, replaying full curves in order
    through lrtune's pruner ``pruner``."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rule = make_pruner(PrunerSpec(name=pruner), epochs)
        study = optuna.create_study(pruner=rule)
    pruned: dict[int, int] = {}
    for t in trials:
        if len(t["values"]) < epochs:  # diverged: ends at once either way
            continue
        for epoch in range(epochs - 1):
            if rule.prune(study, frozen(t, t["values"][:epoch + 1],
                                        optuna.trial.TrialState.RUNNING)):
                pruned[t["number"]] = epoch
                study.add_trial(frozen(t, t["values"][:epoch + 1],
                                       optuna.trial.TrialState.PRUNED))
                break
        else:
            study.add_trial(frozen(t, t["values"], optuna.trial.TrialState.COMPLETE))
    return pruned


def pruning_evidence(runs: list[dict[str, Any]], epochs: int, pruners: list[str]
                     ) -> dict[str, Any]:
    """Per family: early vs final rank, and how often each pruner kills eventual winners."""
    check = max(1, epochs // 4)  # the default median pruner's first decision epoch
    shift: dict[str, list[float]] = defaultdict(list)
    winners: dict[str, int] = defaultdict(int)
    killed = {name: defaultdict(int) for name in pruners}
    saved = dict.fromkeys(pruners, 0)
    total_epochs = 0
    for run in runs:
        full = [t for t in run["trials"] if len(t["values"]) == epochs]
        if len(full) < 5:
            continue
        early = sorted(full, key=lambda t: t["values"][check])
        final = sorted(full, key=lambda t: t["values"][-1])
        rank_early = {t["number"]: i / (len(full) - 1) for i, t in enumerate(early)}
        rank_final = {t["number"]: i / (len(full) - 1) for i, t in enumerate(final)}
        top = {t["number"] for t in final[:max(1, round(TOP * len(full)))]}
        for t in full:
            shift[t["family"]].append(rank_early[t["number"]] - rank_final[t["number"]])
            if t["number"] in top:
                winners[t["family"]] += 1
        total_epochs += epochs * len(full)
        for name in pruners:
            pruned = replay(run["trials"], epochs, name)
            saved[name] += sum(epochs - (e + 1) for e in pruned.values())
            for t in full:
                if t["number"] in top and t["number"] in pruned:
                    killed[name][t["family"]] += 1
    families = sorted(shift, key=lambda f: -statistics.mean(shift[f]))
    return {
        "check_epoch": check + 1,
        "runs": len(runs), "trials": sum(len(v) for v in shift.values()),
        "families": {f: {"trials": len(shift[f]), "rank_shift": statistics.mean(shift[f]),
                         "winners": winners[f],
                         **{f"killed_{n}": killed[n][f] for n in pruners}}
                     for f in families},
        "winners": sum(winners.values()),
        "timing": {group: {"winners": sum(winners[f] for f in fams),
                           **{n: sum(killed[n][f] for f in fams) for n in pruners}}
                   for group, fams in TIMING.items()},
        "killed": {n: sum(killed[n].values()) for n in pruners},
        "saved_fraction": {n: saved[n] / total_epochs for n in pruners},
    }


def evidence_table(ev: dict[str, Any], names: list[str]) -> str:
    head = ("| family | trials | early − final rank | winners | "
            + " | ".join(f"winners pruned by {n}" for n in names) + " |")
    lines = [head, "|" + "---|" * (4 + len(names))]
    for family, row in ev["families"].items():
        lines.append(f"| {family} | {row['trials']} | {row['rank_shift']:+.3f} | "
                     f"{row['winners']} | "
                     + " | ".join(str(row[f"killed_{n}"]) for n in names) + " |")
    lines.append(f"| **all** | | | {ev['winners']} | "
                 + " | ".join(f"**{ev['killed'][n]}** "
                              f"({ev['saved_fraction'][n]:.0%} of epochs saved)"
                              for n in names) + " |")
    for group, row in ev["timing"].items():
        lines.append(f"| _{group}_ ({', '.join(TIMING[group])}) | | | {row['winners']} | "
                     + " | ".join(f"{row[n]} ({row[n] / max(1, row['winners']):.0%})"
                                  for n in names) + " |")
    return "\n".join(lines)


# -- plots ----------------------------------------------------------------------------------

def plot_task(task: str, methods: dict[str, list[dict[str, Any]]], out: Path) -> None:
    """Two panels: everything, and a zoom on the searches' end game beside the best
    textbook setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, panels = plt.subplots(1, 2, figsize=(14, 5.5))
    budget = max(r["budget"] for runs in methods.values() for r in runs)
    grid = list(range(1, budget + 1))
    textbook = {m: (statistics.median(f), len(f)) for m in methods if m not in SEARCHES
                if (f := [r["best"] for r in methods[m] if r["best"] is not None])}
    for ax in panels:
        for i, method in enumerate(m for m in SEARCHES if m in methods):
            runs = methods[method]
            med = median_curve(runs, grid)
            band = [[v for r in runs if (v := best_at(r["curve"], x)) is not None]
                    for x in grid]
            xs = [x for x, v in zip(grid, med, strict=True) if v is not None]
            ax.plot(xs, [v for v in med if v is not None], color=f"C{i}", linewidth=2,
                    label=f"{method} (median of {len(runs)} seeds)")
            ax.fill_between(xs, [min(b) for b, v in zip(band, med, strict=True) if v is not None],
                            [max(b) for b, v in zip(band, med, strict=True) if v is not None],
                            color=f"C{i}", alpha=0.12)
        for j, (method, (value, seeds)) in enumerate(textbook.items()):
            ax.axhline(value, color=plt.cm.Dark2(j % 8), linestyle=(0, (4, 2 + j % 3)),
                       linewidth=1.2, label=f"{method} (one run, median of {seeds} seeds)")
        ax.set(xlabel="trial-epochs spent", ylabel="best validation loss so far")
        ax.grid(alpha=0.3)
    searched = [r["best"] for m in SEARCHES if m in methods for r in methods[m]
                if r["best"] is not None]
    full, zoom = panels
    if textbook and searched:
        values = [value for value, _ in textbook.values()]
        low, high = min(searched), max(values)
        full.set_ylim(low - 0.05 * (high - low), high + 0.08 * (high - low))
        top = min(values)
        zoom.set_ylim(low - 0.1 * (top - low), top + 0.25 * (top - low))
    if "random" in methods:  # where "reaches random search's final median" is read
        final = statistics.median(r["best"] for r in methods["random"] if r["best"] is not None)
        zoom.axhline(final, color="C0", linestyle=":", linewidth=1.5,
                     label="random search's final median")
        zoom.legend(fontsize=6, loc="lower left", framealpha=0.6)
    full.set_title(f"{task}: best-so-far at equal budget (bands: min..max over seeds)")
    zoom.set_title("zoom: the searches against the best textbook setting")
    full.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def markers(stem: str) -> tuple[str, str]:
    name = stem.replace("_", "-")
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def render(tasks: dict[str, Any], machine: dict[str, Any], stem: str = "search_quality"
           ) -> str:
    begin, end = markers(stem)
    out = [begin, f"_Generated by `python bench/search_report.py --results "
                  f"bench/results/{stem}.jsonl`; machine: {machine.get('cpu')}, "
                  f"{machine.get('cores')} cores, torch {machine.get('torch')}, optuna "
                  f"{machine.get('optuna')}, newest run {machine.get('when')}._", ""]
    for task, t in tasks.items():
        f = t["facts"]
        out += [f"### {task}", "", t["table"], "",
                f"![best-so-far, {task}](../bench/results/{t['plot']})", ""]
        for method in SEARCHES[1:]:
            if method in f:
                m = f[method]
                margin = m["margin_to_best_textbook"]
                textbook = "" if margin is None else (
                    f"beats every textbook setting: {'yes' if m['beats_every_textbook'] else 'NO'}"
                    f" (median margin to the best one {margin:+.4f}); ")
                out.append(f"- **{method}**: {textbook}beats random search's median: "
                           f"{'yes' if m['beats_random_median'] else 'NO'}.")
        for method in SEARCHES[1:]:
            if method not in f:
                continue
            low, high = f[method]["reach_interval"]
            spread = (f" (seeds drawn again {RESAMPLES:,} times: 90 % of draws between "
                      f"{share(low)} and {share(high)})")
            if f[method]["reaches_random_final"] is not None:
                out.append(f"- **{method}** reaches random search's final median in "
                           f"{f[method]['reaches_random_final']} trial-epochs, "
                           f"{f[method]['fraction_of_random']:.0%} of random search's budget"
                           f"{spread}.")
            else:
                out.append(f"- **{method}** does not reach random search's final median "
                           f"within the budget{spread}.")
        ev = t["evidence"]
        out += ["", f"Pruning replay on {task}: {ev['trials']} random-search trials of "
                    f"{ev['runs']} runs, replayed in order (decision from epoch "
                    f"{ev['check_epoch']}; winners = best {TOP:.0%} of each run by final "
                    f"value; early − final rank > 0: looks worse early than it ends):", "",
                t["evidence_table"], ""]
    out.append(end)
    return "\n".join(out)


def write_section(doc: Path, section: str, stem: str = "search_quality") -> None:
    """Replace the generated section of ``doc`` (the rest is hand-written); a section not
    there yet is added at the end."""
    begin, end = markers(stem)
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    if begin not in text:
        text = f"{text.rstrip()}\n\n{begin}\n{end}\n"
    head, _, rest = text.partition(begin)
    _, _, tail = rest.partition(end)
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(head + section + tail)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS / "search_quality.jsonl")
    parser.add_argument("--doc", type=Path, default=DOC)
    parser.add_argument("--pruning", type=Path, default=RESULTS / "search_pruning.jsonl",
                        help="extra random-search runs for the pruning replay (if present)")
    args = parser.parse_args()
    rows = load(args.results)
    stem = args.results.stem
    report: dict[str, Any] = {"tasks": {}}
    for task in sorted({r["task"] for r in rows}):
        methods = by_method(rows, task)
        table, facts = task_table(task, methods)
        plot = RESULTS / f"{stem}_{task}.png"
        plot_task(task, methods, plot)
        epochs = methods["random"][0]["epochs"]
        extra = by_method(load(args.pruning), task) if args.pruning.exists() else {}
        evidence = pruning_evidence(extra.get("random") or methods["random"], epochs, PRUNERS)
        report["tasks"][task] = {"table": table, "facts": facts, "plot": plot.name,
                                 "evidence": evidence,
                                 "evidence_table": evidence_table(evidence, PRUNERS)}
    machine = max((r["machine"] for r in rows), key=lambda m: m["when"])
    write_section(args.doc, render(report["tasks"], machine, stem), stem)
    print(render(report["tasks"], machine, stem))
    (RESULTS / f"{stem}_summary.json").write_text(json.dumps(
        {t: {"facts": v["facts"], "evidence": v["evidence"]} for t, v in report["tasks"].items()}
        | {"machine": machine}, indent=1))


if __name__ == "__main__":
    main()
