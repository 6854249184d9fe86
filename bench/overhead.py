"""Per-trial coordination cost: lrtune's worker path against raw Optuna ask/tell.

Both sides do the same per-trial work besides coordination: sample the study's search space
and report ``--epochs`` values with a no-op task (no training). The "lrtune" side is the
store's calls a worker makes: ``Store.claim`` (exact budget, reaping), the heartbeat,
per-epoch reports through the worker's reporter, ``Store.finish``. Raw Optuna is ``ask`` /
``report`` / ``tell`` with each worker taking ``trials / workers`` of the budget. The
trial's result attributes that lrtune writes for users (LR curve, metrics, config: three
writes per trial) are product data, not coordination, and are left out of both sides (not
of the worker sides below).

    python bench/overhead.py --db postgresql --workers 1,4,16 --trials 2000 --sampler random

``--pack K`` adds lrtune's packed path (claims of K trials, the ledger's batched reports and
endings) to the same table.

"db" and "http" are lrtune's worker on each of its two sources, through the one interface
its loop and pack trainer drive (``lrtune_worker.source``): "db" the database
(``StoreSource``, what ``lrtune worker`` runs with ``LRTUNE_DATABASE_URL``), "http" the lease
protocol (``LeaseSource``, what ``lrtune worker --url`` runs, with a worker token made as
``lrtune token create --worker`` makes it) against a real ``lrtune serve --workers 0`` on
loopback, started on the same database before the clock. Both record what a training records
(the config, the steps per epoch, each epoch's value, LR and metrics, the LR curve); only the
training is left out. "db-packK" and "http-packK" (with ``--pack K``) do so for a study whose
``pack`` is K; the HTTP worker's first lease of a study is one trial, which sizes its pack, as
the worker does. ``vs_direct`` is http / db and http-packK / db-packK, both from one run;
``requests`` the HTTP requests the workers sent, ``request_ms`` their mean round trip, and
``server_ms`` the server's own time per lease route (requests, mean ms; from its /metrics).

    python bench/overhead.py --db postgresql --workers 1 --trials 4096 --pack 64 \
        --sides db-pack,http-pack

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
import re
import statistics
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna  # noqa: E402
import psycopg  # noqa: E402

from bench.api_load import free_port, spawn, stop  # noqa: E402
from bench.fleet import wait_ready  # noqa: E402
from bench.machine import machine  # noqa: E402
from lrtune.settings import Settings  # noqa: E402
from lrtune.space import SearchSpace  # noqa: E402
from lrtune.spec import StudySpec  # noqa: E402
from lrtune.store import Store  # noqa: E402

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
RESULTS = Path(__file__).parent / "results" / "overhead.jsonl"
ROOT = Path(__file__).resolve().parents[1]


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


def spec(trials: int, epochs: int, sampler: str, pruner: str = "none", pack: int = 1
         ) -> StudySpec:
    return StudySpec(name="overhead", task="linreg", epochs=epochs, n_trials=trials,
                     sampler={"name": sampler}, pruner={"name": pruner}, pack=pack,
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
    # the first COMPLETE trial writes the study's dashboard note, whose first use imports
    # optuna_dashboard (scikit-learn, SciPy: seconds, once per process): an import, set up
    # before the clock, as the HTTP sides' server has it loaded before theirs
    import optuna_dashboard  # noqa: F401

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


def source_worker(where: str, token: str, study_spec: StudySpec, pack: int, ready: Any,
                  go: Any, out: Any) -> None:
    """lrtune's worker on either of its sources, through the one interface its loop and pack
    trainer use (``Source`` and its lots), in the order ``Worker._work`` and ``run_pack``
    drive them (``train_trial`` for one trial, ``train_pack`` for a pack), the training left
    out: ``StoreSource`` on the database URL ``where`` (``lrtune worker`` with
    ``LRTUNE_DATABASE_URL``), or ``LeaseSource`` on the API at ``where`` with the worker token
    (``lrtune worker --url``). Each trial ends as a training ends it, with its LR curve and
    metrics. ``pack``: the pack size the worker's sizer gives the study (1: one trial at a
    time)."""
    import httpx
    import torch

    from lrtune_worker.integrations import NO_LOG
    from lrtune_worker.remote import LeaseSource
    from lrtune_worker.runner import TrialOutcome
    from lrtune_worker.stored import StoreSource
    from lrtune_worker.tasks import get_task
    from lrtune_worker.train import TrainResult

    sent: list[float] = []  # each HTTP request's round trip, seconds
    source: Any
    if where.startswith("http"):
        source = LeaseSource.connect(where, token, Settings().max_body_bytes)

        def timed(request: httpx.Request) -> None:
            request.extensions["bench_start"] = time.perf_counter()

        def took(response: httpx.Response) -> None:
            sent.append(time.perf_counter() - response.request.extensions["bench_start"])

        source.client.http.event_hooks = {"request": [timed], "response": [took]}
    else:
        import optuna_dashboard  # noqa: F401  (as in lrtune_side: an import, not a cost)

        settings = Settings(database_url=where)
        source = StoreSource(Store(settings, migrate=False), settings)
    task, device = get_task(study_spec.task), torch.device("cpu")
    epochs = study_spec.epochs
    curve = [0.1 * (epochs - e) / epochs for e in range(epochs)]
    start_line(ready, go)
    times = []
    while True:
        start = time.perf_counter()
        lot = source.claim(None, lambda _spec: pack)
        if lot is None:
            break
        with lot.heartbeat():
            search = lot.search_spec(device)
            for slot in lot.slots:
                lot.configure(slot, search, task)
            lot.flush()
            reporters = [lot.reporter(slot, lambda: None, NO_LOG) for slot in lot.slots]
            for epoch in range(epochs):
                for reporter in reporters:
                    reporter.report(epoch, 1.0 / (epoch + 1), curve[epoch],
                                    {"val_loss": 1.0 / (epoch + 1)})
                lot.reports_done()
                for reporter in reporters:
                    reporter.should_prune()
                lot.flush()
            result = TrainResult("complete", 0.5, epochs, [1.0 / (e + 1) for e in range(epochs)],
                                 curve, {"val_loss": 1.0 / epochs})
            for slot in lot.slots:
                lot.finish(slot, TrialOutcome(optuna.trial.TrialState.COMPLETE, 0.5, None,
                                              result))
            lot.flush()
        per_trial = (time.perf_counter() - start) / len(lot.slots)
        times.extend([per_trial] * len(lot.slots))
    out.put((times, sent))


def serve(url: str, tmp: Path) -> tuple[str, str, subprocess.Popen[Any]]:
    """``lrtune serve --workers 0`` on a free loopback port of the database ``url``, ready; its
    base URL, a worker token (made as ``lrtune token create --worker`` makes it), the process."""
    from lrtune.store.tokens import WORKER

    store = Store(Settings(database_url=url), migrate=False)
    token = store.create_token("bench-workers", WORKER)
    store.engine.dispose()
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    with (tmp / f"overhead-api{port}.log").open("a") as log:
        proc = spawn([sys.executable, "-m", "lrtune", "serve", "--workers", "0",
                      "--port", str(port)], env=os.environ | {"LRTUNE_DATABASE_URL": url},
                     cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(api, proc, tmp)
    except BaseException:
        stop(proc)
        raise
    return api, token, proc


def served(api: str) -> dict[str, list[float]]:
    """The server's own time per lease route, from its ``/metrics``: route -> [requests, mean
    ms] (the request from the ASGI app's first byte in to its last byte out)."""
    import httpx

    text = httpx.get(f"{api}/metrics", timeout=30).text
    found: dict[str, dict[str, float]] = {}
    for kind, route, value in re.findall(
            r'^lrtune_http_request_seconds_(sum|count)\{route="(/v\d+/leases[^"]*)"\} (\S+)$',
            text, re.M):
        found.setdefault(route, {})[kind] = float(value)
    return {route.rsplit("/", 1)[1] if "{" in route else "claim":
            [int(v["count"]), round(v["sum"] / v["count"] * 1e3, 3)]
            for route, v in found.items() if v.get("count")}


def run(side: str, db: str, workers: int, trials: int, epochs: int, sampler: str,
        tmp: Path, pruner: str = "none") -> dict[str, Any]:
    url = fresh_database(db, tmp)
    size = int(side.rsplit("pack", 1)[1]) if "pack" in side else 1
    study_spec = spec(trials, epochs, sampler, pruner, size)
    server: subprocess.Popen[Any] | None = None
    api = ""
    try:
        store = Store(Settings(database_url=url))
        store.create_study(study_spec, "bench")
        store.engine.dispose()
        ctx = mp.get_context("spawn")
        out, ready, go = ctx.Queue(), ctx.Queue(), ctx.Event()
        if side.startswith(("http", "db")):
            token = ""
            if side.startswith("http"):
                api, token, server = serve(url, tmp)
            procs = [ctx.Process(target=source_worker,
                                 args=(api or url, token, study_spec, size, ready, go, out))
                     for _ in range(workers)]
        elif side == "lrtune":
            procs = [ctx.Process(target=lrtune_worker, args=(url, study_spec, ready, go, out))
                     for _ in range(workers)]
        elif side.startswith("pack"):
            procs = [ctx.Process(target=packed_worker,
                                 args=(url, study_spec, size, ready, go, out))
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
        answers = [out.get() for _ in procs]
        wall = time.perf_counter() - start
        for p in procs:
            p.join()
        sent = [x for a in answers if isinstance(a, tuple) for x in a[1]]
        per_worker = [a[0] if isinstance(a, tuple) else a for a in answers]
        done = sum(len(t) for t in per_worker)
        tenth = [max(1, len(t) // 10) for t in per_worker]
        first = statistics.mean(x for t, k in zip(per_worker, tenth, strict=True)
                                for x in t[:k])
        last = statistics.mean(x for t, k in zip(per_worker, tenth, strict=True)
                               for x in t[-k:])
        trial_mean = statistics.mean(x for t in per_worker for x in t)
        check = Store(Settings(database_url=url), migrate=False)
        counts = check.trial_counts(check.list_studies()[0][0])
        check.engine.dispose()
        http = {"requests": len(sent), "request_ms": round(statistics.mean(sent) * 1e3, 3),
                "server_ms": served(api)} if sent else {}
        return {"bench": "overhead", "side": side, "db": db, "sampler": sampler,
                "pruner": pruner, "workers": workers, "trials": done, "epochs": epochs,
                "wall_s": round(wall, 3), "cost_ms": round(wall * workers / done * 1e3, 3),
                "trial_ms": round(trial_mean * 1e3, 3), "first_ms": round(first * 1e3, 3),
                "last_ms": round(last * 1e3, 3), "complete": counts["COMPLETE"], **http}
    finally:
        if server is not None:
            stop(server)
        drop_database(url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", default="postgresql,sqlite")
    parser.add_argument("--workers", default="1,4,16")
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--sampler", default="random")
    parser.add_argument("--pruner", default="none",
                        help="the study's pruner (none: an HTTP worker sends epochs together)")
    parser.add_argument("--pack", type=int, default=0,
                        help="also measure packed claims of this size (ledger bookkeeping)")
    parser.add_argument("--sides", default="raw,lrtune,pack,db,db-pack,http,http-pack",
                        help="sides to run (the -pack ones and pack only with --pack)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    info = machine()
    code = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                          capture_output=True).stdout.strip()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    wanted = args.sides.split(",")
    sides = [s for s in ("raw", "lrtune", "db", "http") if s in wanted] + (
        [f"{s}{args.pack}" for s in ("pack", "db-pack", "http-pack") if s in wanted]
        if args.pack else [])
    # the HTTP side's counterpart in the same run: its cost over it is vs_direct
    direct = {"http": "db", f"http-pack{args.pack}": f"db-pack{args.pack}"}
    for db in args.db.split(","):
        for sampler in args.sampler.split(","):
            for workers in (int(w) for w in args.workers.split(",")):
                rows = {side: run(side, db, workers, args.trials, args.epochs, sampler, tmp,
                                  args.pruner) for side in sides}
                for side, row in rows.items():
                    if "raw" in rows:
                        row["ratio"] = round(row["cost_ms"] / rows["raw"]["cost_ms"], 3)
                    if direct.get(side) in rows:
                        row["vs_direct"] = round(
                            row["cost_ms"] / rows[direct[side]]["cost_ms"], 3)
                    row.update(machine=info, pack=int(side.rsplit("pack", 1)[1])
                               if "pack" in side else 1, code=code)
                    with args.out.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    http = (f"  {row['requests'] / row['trials']:.1f} requests/trial, "
                            f"{row['request_ms']:.2f} ms each" if "requests" in row else "")
                    vs = (f"  vs {direct[side]} {row['vs_direct']:.3f}"
                          if "vs_direct" in row else "")
                    ratio = f"  ratio to raw {row['ratio']:.3f}" if "ratio" in row else ""
                    print(f"{db:10} {sampler:6} workers={workers:2} trials={args.trials} "
                          f"{side:>13} {row['cost_ms']:7.2f} ms/trial (first/last 10%: "
                          f"{row['first_ms']:.1f}/{row['last_ms']:.1f} ms){ratio}{vs}{http}",
                          flush=True)

if __name__ == "__main__":
    main()
