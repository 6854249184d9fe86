"""Per-trial coordination cost: lrtune's worker path against raw Optuna ask/tell.

Both sides do the same per-trial work besides coordination: sample the study's search space
and report ``--epochs`` values with a no-op task (no training). lrtune's side is the worker's
own path: ``Store.claim`` (exact budget, reaping), the heartbeat, per-epoch reports through
the worker's reporter, ``Store.finish``. Raw Optuna is ``ask`` / ``report`` / ``tell`` with
each worker taking ``trials / workers`` of the budget. The trial's result attributes that
lrtune writes for users (LR curve, metrics, config: three writes per trial) are product data,
not coordination, and are left out of both sides.

    python bench/overhead.py --db postgresql --workers 1,4,16 --trials 2000 --sampler random

``--pack K`` adds lrtune's packed path (claims of K trials, the ledger's batched reports and
endings) to the same table.

One JSON line per (database, sampler, workers, side) goes to bench/results/overhead.jsonl;
``cost_ms`` is wall time × workers / trials (worker-milliseconds per trial), and
``first_ms`` / ``last_ms`` the mean per-trial time over the first and last 10 % of each
worker's trials (flat means the cost does not grow with the number of trials).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna  # noqa: E402
import psycopg  # noqa: E402

from bench.machine import machine  # noqa: E402
from lrtune.settings import Settings  # noqa: E402
from lrtune.space import SearchSpace  # noqa: E402
from lrtune.spec import StudySpec  # noqa: E402
from lrtune.store import Store  # noqa: E402

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
RESULTS = Path(__file__).parent / "results" / "overhead.jsonl"


def fresh_database(kind: str, tmp: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp / f'overhead-{uuid.uuid4().hex[:8]}.db'}"
    name = f"lrtune_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def drop_database(url: str) -> None:
    if url.startswith("postgresql"):
        name = url.rsplit("/", 1)[1]
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
            admin.execute(f'DROP DATABASE IF EXISTS "{name}"')


def spec(trials: int, epochs: int, sampler: str) -> StudySpec:
    return StudySpec(name="overhead", task="linreg", epochs=epochs, n_trials=trials,
                     sampler={"name": sampler}, pruner={"name": "none"},
                     space={"families": ["cosine", "step", "onecycle"],
                            "optimizers": ["sgd", "adam"]})


def start_line(ready: Any, go: Any) -> None:
    """Quiet the libraries, say ready, and wait for every worker before the clock starts."""
    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ready.put(os.getpid())
    go.wait()


def lrtune_side(url: str, study_spec: StudySpec, ready: Any, go: Any
                ) -> tuple[Store, SearchSpace]:
    """The store and space an lrtune-side worker uses, ready before the clock starts."""
    store = Store(Settings(database_url=url), migrate=False)
    space = SearchSpace(study_spec.space)
    start_line(ready, go)
    return store, space


def lrtune_worker(url: str, study_spec: StudySpec, ready: Any, go: Any, out: Any) -> None:
    from lrtune_worker.heartbeat import Heartbeat
    from lrtune_worker.runner import OptunaReporter

    store, space = lrtune_side(url, study_spec, ready, go)
    times = []
    while True:
        start = time.perf_counter()
        claim = store.claim()
        if claim is None:
            break
        with Heartbeat(store, [claim.trial_id], 10):
            space.sample(claim.trial)
            reporter = OptunaReporter(claim.trial)
            for epoch in range(study_spec.epochs):
                reporter.report(epoch, 1.0 / (epoch + 1), 0.1, {})
                reporter.should_prune()
        store.finish(claim, optuna.trial.TrialState.COMPLETE, 0.5)
        times.append(time.perf_counter() - start)
    out.put(times)


def packed_worker(url: str, study_spec: StudySpec, pack: int, ready: Any, go: Any,
                  out: Any) -> None:
    """lrtune's packed path: one claim per pack, the ledger's batched reports and endings."""
    from lrtune.ledger import PackLedger

    store, space = lrtune_side(url, study_spec, ready, go)
    times = []
    while True:
        start = time.perf_counter()
        claims = store.claim_pack(pack)
        if not claims:
            break
        ledger = PackLedger(store, claims)
        for claim in claims:
            space.sample(claim.trial)
        for epoch in range(study_spec.epochs):
            for claim in claims:
                ledger.report(claim.trial.number, epoch, 1.0 / (epoch + 1))
                ledger.should_prune(claim.trial.number)
            ledger.flush()
        for claim in claims:
            ledger.finish(claim.trial.number, optuna.trial.TrialState.COMPLETE, 0.5)
        ledger.flush()
        per_trial = (time.perf_counter() - start) / len(claims)
        times.extend([per_trial] * len(claims))
    out.put(times)


def raw_worker(url: str, study_spec: StudySpec, quota: int, ready: Any, go: Any,
               out: Any) -> None:
    from lrtune.study import make_pruner, make_sampler

    study = optuna.load_study(study_name="overhead", storage=url,
                              sampler=make_sampler(study_spec.sampler),
                              pruner=make_pruner(study_spec.pruner, study_spec.epochs))
    space = SearchSpace(study_spec.space)
    times = []
    start_line(ready, go)
    for _ in range(quota):
        start = time.perf_counter()
        trial = study.ask()
        space.sample(trial)
        for epoch in range(study_spec.epochs):
            trial.report(1.0 / (epoch + 1), epoch)
            trial.should_prune()
        study.tell(trial, 0.5)
        times.append(time.perf_counter() - start)
    out.put(times)


def run(side: str, db: str, workers: int, trials: int, epochs: int, sampler: str,
        tmp: Path) -> dict[str, Any]:
    url = fresh_database(db, tmp)
    study_spec = spec(trials, epochs, sampler)
    try:
        store = Store(Settings(database_url=url))
        store.create_study(study_spec, "bench")
        store.engine.dispose()
        ctx = mp.get_context("spawn")
        out, ready, go = ctx.Queue(), ctx.Queue(), ctx.Event()
        if side == "lrtune":
            procs = [ctx.Process(target=lrtune_worker, args=(url, study_spec, ready, go, out))
                     for _ in range(workers)]
        elif side.startswith("pack"):
            procs = [ctx.Process(target=packed_worker,
                                 args=(url, study_spec, int(side[4:]), ready, go, out))
                     for _ in range(workers)]
        else:
            quotas = [trials // workers + (i < trials % workers) for i in range(workers)]
            procs = [ctx.Process(target=raw_worker, args=(url, study_spec, q, ready, go, out))
                     for q in quotas]
        for p in procs:
            p.start()
        for _ in procs:  # imports and connections set up before the clock starts
            ready.get()
        start = time.perf_counter()
        go.set()
        per_worker = [out.get() for _ in procs]
        wall = time.perf_counter() - start
        for p in procs:
            p.join()
        done = sum(len(t) for t in per_worker)
        tenth = [max(1, len(t) // 10) for t in per_worker]
        first = statistics.mean(x for t, k in zip(per_worker, tenth, strict=True)
                                for x in t[:k])
        last = statistics.mean(x for t, k in zip(per_worker, tenth, strict=True)
                               for x in t[-k:])
        trial_mean = statistics.mean(x for t in per_worker for x in t)
        check = Store(Settings(database_url=url), migrate=False)
        counts = check.trial_counts(check.list_studies()[0][0])
        return {"bench": "overhead", "side": side, "db": db, "sampler": sampler,
                "workers": workers, "trials": done, "epochs": epochs,
                "wall_s": round(wall, 3), "cost_ms": round(wall * workers / done * 1e3, 3),
                "trial_ms": round(trial_mean * 1e3, 3), "first_ms": round(first * 1e3, 3),
                "last_ms": round(last * 1e3, 3), "complete": counts["COMPLETE"]}
    finally:
        drop_database(url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", default="postgresql,sqlite")
    parser.add_argument("--workers", default="1,4,16")
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--sampler", default="random")
    parser.add_argument("--pack", type=int, default=0,
                        help="also measure packed claims of this size (ledger bookkeeping)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    info = machine()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for db in args.db.split(","):
        for sampler in args.sampler.split(","):
            for workers in (int(w) for w in args.workers.split(",")):
                sides = ["raw", "lrtune"] + ([f"pack{args.pack}"] if args.pack else [])
                rows = {side: run(side, db, workers, args.trials, args.epochs, sampler, tmp)
                        for side in sides}
                ratio = rows["lrtune"]["cost_ms"] / rows["raw"]["cost_ms"]
                for side, row in rows.items():
                    row.update(ratio=round(row["cost_ms"] / rows["raw"]["cost_ms"], 3),
                               machine=info, pack=int(side[4:]) if side.startswith("pack")
                               else 1)
                    with args.out.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                print(f"{db:10} {sampler:6} workers={workers:2} trials={args.trials} "
                      f"raw {rows['raw']['cost_ms']:.2f} ms  lrtune "
                      f"{rows['lrtune']['cost_ms']:.2f} ms  ratio {ratio:.2f}  "
                      f"(lrtune first/last 10%: {rows['lrtune']['first_ms']:.1f}/"
                      f"{rows['lrtune']['last_ms']:.1f} ms; raw "
                      f"{rows['raw']['first_ms']:.1f}/{rows['raw']['last_ms']:.1f} ms)",
                      flush=True)
                if args.pack:
                    packed = rows[f"pack{args.pack}"]
                    print(f"{'':10} {sampler:6} workers={workers:2} packed K={args.pack}: "
                          f"{packed['cost_ms']:.2f} ms per trial (claim + {args.epochs} "
                          f"reports + finish)", flush=True)


if __name__ == "__main__":
    main()
