"""What one claim costs when a study's history holds H finished trials, cold and warm.

    python bench/claim_cost.py --histories 1000,10000 --samplers tpe,random --counts 1,8

For each H, a fresh PostgreSQL database and, per sampler, a study of lrtune's default space
(13 families, 5 optimizers, ``linreg``, ``--epochs`` epochs, the default percentile pruner;
``tpe`` is lrtune's default sampler, ``LazyGroupTPESampler``) whose history is H finished trials
written in bulk as lrtune writes them: parameters drawn from the spec's own distributions, a
value, one intermediate value per epoch (fewer for the quarter PRUNED) and the user attributes
lrtune stores (config, LR curve, metrics). A claim is timed on three paths, each in a fresh
process (the Optuna study and its storage cache live per process):

* ``store``: ``Store.claim_pack(count)`` plus sampling each trial's configuration, as the
  worker's database path does (a pack's parameters are written later, with its first reports);
* ``lease``: ``Store.leases.claim`` in process, what ``POST /v1/leases`` runs (claim, sample,
  write the parameters, config attributes and the lease);
* ``http``: ``POST /v1/leases`` with a worker token against ``lrtune serve --workers 0`` on
  loopback (client-side wall time).

Each process first claims once from a small study of the same sampler (imports, token, code
paths warm), then claims ``--claims`` + 1 times from the history study: the first claim is
``cold`` (loads the Optuna study and reads the history), the rest ``warm``. Between claims the
claimed trials are finished COMPLETE through the store, untimed, as a worker would. On the
``store`` and ``lease`` paths a SQLAlchemy ``after_cursor_execute`` listener on both engines
(lrtune's and Optuna's storage's) counts the statements and the rows each SELECT returned,
by the table it reads from: ``trial_rows`` are rows of Optuna's ``trials`` table,
``history_rows`` rows of every per-trial table (trials, params, values, intermediate values,
user and system attributes), and ``db_ms`` the time spent in the driver's ``execute``
(round trip and transfer; the rest of a claim is Python: ORM rows, sampling). One JSON line
per (H, sampler, path, count), with the load average before it and the machine, goes to
bench/results/claim_cost.jsonl.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing as mp
import os
import random
import re
import statistics
import subprocess
import sys
import time
import uuid
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
import optuna  # noqa: E402
import psycopg  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from optuna.distributions import distribution_to_json  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from bench.api_load import free_port, spawn, stop  # noqa: E402
from bench.machine import machine  # noqa: E402
from lrtune import optuna_internals as internals  # noqa: E402
from lrtune import study as names  # noqa: E402
from lrtune.settings import Settings  # noqa: E402
from lrtune.space import SearchSpace  # noqa: E402
from lrtune.spec import SamplerSpec, StudySpec  # noqa: E402
from lrtune.store import Store, StudyRecord  # noqa: E402
from lrtune.store.pack_storage import PackStorage  # noqa: E402
from lrtune.store.trials import Ending, optuna_now  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "claim_cost.jsonl"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
OWNER, WORKER = "claim-cost-owner", "claim-cost-worker"
HISTORY_TABLES = {"trials", "trial_params", "trial_values", "trial_intermediate_values",
                  "trial_user_attributes", "trial_system_attributes"}
FROM = re.compile(r"\bFROM\s+\"?(\w+)", re.IGNORECASE)
PRUNED_SHARE = 0.25


def spec(name: str, sampler: str, n_trials: int, epochs: int) -> StudySpec:
    """lrtune's default spec for ``linreg`` (every family and optimizer), ``sampler``."""
    return StudySpec(name=name, task="linreg", epochs=epochs, n_trials=n_trials,
                     sampler=SamplerSpec(name=sampler))


# -- the history ----------------------------------------------------------------------------
def drawn_history(study_spec: StudySpec, h: int, seed: int) -> list[dict[str, Any]]:
    """``h`` trials' parameters (with their distributions) and configurations, drawn by
    lrtune's own space from the spec's distributions (in-memory Optuna, random sampler)."""
    space = SearchSpace(study_spec.space, names.direction(study_spec))
    drawn: list[dict[str, Any]] = []
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    while len(drawn) < h:  # studies of 500: ask() scans every trial for a waiting one
        scratch = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed + len(drawn)))
        for _ in range(min(500, h - len(drawn))):
            trial = scratch.ask()
            config = space.sample(trial)
            drawn.append({"params": dict(trial.params), "config": config.to_dict(),
                          "distributions": dict(trial.distributions)})
    return drawn


def objective(params: dict[str, Any], rng: random.Random) -> float:
    """A made-up validation loss with structure TPE can find: best near lr 1e-2, better for
    some families and optimizers, plus noise."""
    lr = float(params["lr"])
    family = 0.1 * (len(str(params["schedule"])) % 5)
    optimizer = 0.2 if params["optimizer"] in ("adam", "adamw") else 0.0
    return abs(math.log10(lr) + 2.0) + family - optimizer + rng.gauss(0, 0.1) + 1.0


def fill_history(store: Store, record: StudyRecord, drawn: list[dict[str, Any]],
                 epochs: int, seed: int) -> None:
    """Write ``drawn`` as finished trials of ``record``'s Optuna study, in bulk: the rows
    lrtune's worker leaves (state, value, params, one intermediate value per epoch reported,
    config / LR curve / metrics user attributes)."""
    rng = random.Random(seed)
    optuna_id = store.optuna_study_id(record)
    stamp = optuna_now()
    for start in range(0, len(drawn), 2000):
        chunk = drawn[start:start + 2000]
        states = [TrialState.PRUNED if rng.random() < PRUNED_SHARE else TrialState.COMPLETE
                  for _ in chunk]
        with store.transaction() as conn:
            ids = [int(tid) for tid, _ in conn.execute(
                internals.TRIALS.insert().returning(internals.TRIALS.c.trial_id,
                                                    internals.TRIALS.c.number,
                                                    sort_by_parameter_order=True),
                [{"number": start + i, "study_id": optuna_id, "state": state,
                  "datetime_start": stamp, "datetime_complete": stamp}
                 for i, state in enumerate(states)])]
            params, values, inter, attrs = [], [], [], []
            for trial_id, state, trial in zip(ids, states, chunk, strict=True):
                final = objective(trial["params"], rng)
                reported = rng.randint(1, max(1, epochs - 1)) if state == TrialState.PRUNED \
                    else epochs
                curve = [final * (1 + 1 / (step + 1)) for step in range(reported)]
                for name, value in trial["params"].items():
                    dist = trial["distributions"][name]
                    params.append({"trial_id": trial_id, "param_name": name,
                                   "param_value": dist.to_internal_repr(value),
                                   "distribution_json": distribution_to_json(dist)})
                stored, kind = internals.stored_value(curve[-1])
                values.append({"trial_id": trial_id, "objective": 0, "value": stored,
                               "value_type": kind})
                for step, value in enumerate(curve):
                    stored, kind = internals.stored_intermediate(value)
                    inter.append({"trial_id": trial_id, "step": step,
                                  "intermediate_value": stored,
                                  "intermediate_value_type": kind})
                lr = float(trial["params"]["lr"])
                for key, value in ((names.ATTR_CONFIG, trial["config"]),
                                   (names.ATTR_LR_CURVE, [lr * 0.9 ** e for e in range(epochs)]),
                                   (names.ATTR_METRICS, {record.spec.objective: curve[-1]})):
                    attrs.append({"trial_id": trial_id, "key": key,
                                  "value_json": json.dumps(value)})
            conn.execute(internals.PARAMS.insert(), params)
            conn.execute(internals.VALUES.insert(), values)
            conn.execute(internals.INTERMEDIATE.insert(), inter)
            conn.execute(internals.USER_ATTRS.insert(), attrs)


# -- counting what a claim reads --------------------------------------------------------------
class Reads:
    """Statements run and rows each SELECT returned, by the table it reads from, on the
    given engines (psycopg reports a SELECT's row count)."""

    def __init__(self, *engines: sa.Engine) -> None:
        self.statements, self.seconds, self._started = 0, 0.0, 0.0
        self.rows: Counter[str] = Counter()
        for engine in engines:
            sa.event.listen(engine, "before_cursor_execute", self._start)
            sa.event.listen(engine, "after_cursor_execute", self._seen)

    def _start(self, *_: Any) -> None:
        self._started = time.perf_counter()

    def _seen(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
              executemany: bool) -> None:
        self.statements += 1
        self.seconds += time.perf_counter() - self._started
        if statement.lstrip().upper().startswith("SELECT"):
            found = FROM.search(statement)
            self.rows[found.group(1) if found else "?"] += max(cursor.rowcount or 0, 0)

    def take(self) -> dict[str, float]:
        """What was read since the last call."""
        taken = {"statements": self.statements, "trial_rows": self.rows["trials"],
                 "history_rows": sum(n for t, n in self.rows.items() if t in HISTORY_TABLES),
                 "db_ms": self.seconds * 1000}
        self.statements, self.seconds, self.rows = 0, 0.0, Counter()
        return taken


def finish(store: Store, record: StudyRecord, claimed: list[tuple[int, int]],
           rng: random.Random, params: list[PackStorage] | None = None) -> None:
    """End claimed (trial id, number) pairs COMPLETE, as a worker would after training."""
    store.write_trials(record, params=params or [], endings=[
        Ending(tid, number, TrialState.COMPLETE, 1.0 + rng.random()) for tid, number in claimed])


def in_process(path: str, url: str, study_id: int, warm_id: int, count: int, claims: int,
               out: Any) -> None:
    """The ``store`` or ``lease`` path in a fresh process: one warm-up claim on another
    study, then ``claims + 1`` timed claims of ``study_id`` (the first cold)."""
    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store = Store(Settings(database_url=url, worker_tokens=WORKER), migrate=False)
    reads = Reads(store.db.engine, store.optuna_storage.engine)
    rng = random.Random(study_id)
    caller = store.principal(WORKER)
    assert caller is not None and caller.is_worker

    def claim(sid: int) -> tuple[StudyRecord, list[tuple[int, int]], list[PackStorage]]:
        if path == "lease":
            lease = store.leases.claim(caller, sid, count)
            assert lease is not None, "nothing to claim"
            return lease.record, [(t.trial_id, t.number) for t in lease.trials], []
        got = store.claim_pack(count, {sid})
        assert got, "nothing to claim"
        record = got[0].record
        space = SearchSpace(record.search_spec.space, names.direction(record.spec))
        for c in got:
            space.sample(c.trial)
        packs = list({id(c.params): c.params for c in got if c.params}.values())
        return record, [(c.trial_id, c.trial.number) for c in got], packs

    record, claimed, packs = claim(warm_id)
    finish(store, record, claimed, rng, packs)
    rows = []
    for _ in range(claims + 1):
        reads.take()
        start = time.perf_counter()
        record, claimed, packs = claim(study_id)
        took = (time.perf_counter() - start) * 1000
        rows.append({"ms": took, "trials": len(claimed), **reads.take()})
        finish(store, record, claimed, rng, packs)
    out.put(rows)


def over_http(url: str, store: Store, study_id: int, warm_id: int, count: int, claims: int,
              tmp: Path) -> list[dict[str, Any]]:
    """The ``http`` path: a fresh ``lrtune serve --workers 0``, one warm-up lease on another
    study, then ``claims + 1`` timed ``POST /v1/leases`` of ``study_id``."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = os.environ | {"LRTUNE_DATABASE_URL": url, "LRTUNE_API_TOKENS": OWNER,
                        "LRTUNE_WORKER_TOKENS": WORKER}
    rng = random.Random(study_id)
    with (tmp / f"claim-cost-api{port}.log").open("a") as log:
        proc = spawn([sys.executable, "-m", "lrtune", "serve", "--workers", "0", "--port",
                      str(port)], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        with httpx.Client(base_url=base, timeout=600,
                          headers={"Authorization": f"Bearer {WORKER}"}) as http:
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if http.get("/readyz", timeout=5).status_code == 200:
                        break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{base} did not start; see {log.name}")
                time.sleep(0.3)

            def lease(sid: int) -> list[int]:
                answer = http.post("/v1/leases", json={"study_id": sid, "count": count})
                answer.raise_for_status()
                return [int(t["number"]) for t in answer.json()["trials"]]

            def ended(record: StudyRecord, numbers: list[int]) -> None:
                optuna_id, storage = store.optuna_study_id(record), store.optuna_storage
                finish(store, record, [(storage.get_trial_id_from_study_id_trial_number(
                    optuna_id, number), number) for number in numbers], rng)

            ended(store.get_study(warm_id), lease(warm_id))
            record, rows = store.get_study(study_id), []
            for _ in range(claims + 1):
                start = time.perf_counter()
                numbers = lease(study_id)
                rows.append({"ms": (time.perf_counter() - start) * 1000,
                             "trials": len(numbers)})
                ended(record, numbers)
    finally:
        stop(proc)
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Cold (the first claim) and warm (the rest): ms per claim, and what they read."""
    cold, warm = rows[0], rows[1:]
    ms = sorted(r["ms"] for r in warm)
    out: dict[str, Any] = {
        "cold_ms": round(cold["ms"], 1), "warm_p50_ms": round(statistics.median(ms), 1),
        "warm_p95_ms": round(ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))], 1),
        "trials_per_claim": cold["trials"]}
    if "db_ms" in cold:  # time in statements (execute, without fetching rows)
        out["cold_db_ms"] = round(cold["db_ms"], 1)
        out["warm_db_ms_p50"] = round(statistics.median(r["db_ms"] for r in warm), 1)
    for key in ("statements", "trial_rows", "history_rows"):
        if key in cold:
            out[f"cold_{key}"] = cold[key]
            out[f"warm_{key}_p50"] = statistics.median(r[key] for r in warm)
            out[f"warm_{key}_max"] = max(r[key] for r in warm)
    return out


def run_history(h: int, args: argparse.Namespace, info: dict[str, Any], tmp: Path) -> None:
    name = f"claimcost_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    ctx = mp.get_context("spawn")
    try:
        store = Store(Settings(database_url=url, worker_tokens=WORKER))
        budget = h + 10 * (args.claims + 1) * max(args.counts) * len(args.paths)
        start = time.perf_counter()
        drawn = drawn_history(spec("draw", "random", budget, args.epochs), h, seed=h)
        studies: dict[str, tuple[int, int]] = {}
        for sampler in args.samplers:
            record = store.create_study(spec(f"cc-{sampler}", sampler, budget, args.epochs),
                                        OWNER)
            fill_history(store, record, drawn, args.epochs, seed=h)
            warm = store.create_study(spec(f"cc-{sampler}-warmup", sampler, 1000, args.epochs),
                                      OWNER)
            studies[sampler] = (record.id, warm.id)
        print(f"H={h}: history written in {time.perf_counter() - start:.1f} s", flush=True)
        for sampler, (study_id, warm_id) in studies.items():
            for path in args.paths:
                for count in args.counts:
                    load = os.getloadavg()[0]
                    if path == "http":
                        rows = over_http(url, store, study_id, warm_id, count, args.claims, tmp)
                    else:
                        queue = ctx.Queue()
                        proc = ctx.Process(target=in_process, args=(
                            path, url, study_id, warm_id, count, args.claims, queue))
                        proc.start()
                        rows = queue.get(timeout=3600)
                        proc.join(60)
                    row = {"bench": "claim_cost", "history": h, "sampler": sampler,
                           "path": path, "count": count, "claims": args.claims,
                           "epochs": args.epochs, "load_before": load, **summary(rows),
                           "machine": info}
                    with args.out.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    reads = (f"  rows cold/warm: trials {row['cold_trial_rows']}/"
                             f"{row['warm_trial_rows_p50']:g}, history "
                             f"{row['cold_history_rows']}/{row['warm_history_rows_p50']:g}"
                             if "cold_trial_rows" in row else "")
                    print(f"H={h:5} {sampler:6} {path:5} count={count}  cold "
                          f"{row['cold_ms']:8.1f} ms  warm p50 {row['warm_p50_ms']:7.1f} "
                          f"p95 {row['warm_p95_ms']:7.1f} ms{reads}  load {load:.1f}",
                          flush=True)
        store.db.engine.dispose()
        store.optuna_storage.engine.dispose()
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
            admin.execute(f'DROP DATABASE IF EXISTS "{name}"')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--histories", default="1000,10000",
                        help="finished trials in the study's history, comma-separated")
    parser.add_argument("--samplers", default="tpe,random")
    parser.add_argument("--paths", default="store,lease,http")
    parser.add_argument("--counts", default="1,8", help="trials per claim (1, or a pack)")
    parser.add_argument("--claims", type=int, default=20, help="warm claims after the cold one")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.samplers, args.paths = args.samplers.split(","), args.paths.split(",")
    args.counts = [int(c) for c in args.counts.split(",")]
    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    info = machine()
    for h in (int(x) for x in args.histories.split(",")):
        run_history(h, args, info, tmp)


if __name__ == "__main__":
    main()
