"""Databases for ``bench/api_load.py``: studies made through the REST API, finished trials
through Optuna's public API, filled once into a template database and cloned for each run.

A filled template is ``lrtune_bench_api_<studies>x<trials>``; its comment holds how it was
filled (commit, seconds per stage). Filling goes:

1. the API (``bench.api_server``, i.e. ``lrtune serve``) on a new database, a token from
   ``lrtune token create``, ``POST /studies`` for each study (``n_trials`` = trials per study;
   ``linreg`` with the default space, ``digits-mlp`` with warmup, weight decay and batch size
   searched), then the server stops;
2. trials: parameters drawn through lrtune's ``SearchSpace`` as a random sampler would, a
   loss per epoch, the user attributes the worker writes (config, steps per epoch, metrics,
   ``lr_curve``, reason), the curve artifact's system attribute; COMPLETE (65 %) or PRUNED
   (pruned 30 %, diverged 5 %) with the last reported value. Written one of two ways:

   * ``optuna`` (the reference): through Optuna's storage API, as a worker's trial is
     (created RUNNING, its artifact attribute set, then ended: three transactions), in
     several processes, one study at a time each, niced. Optuna writes each row in its own
     ORM round trips (~100 statements a trial): ~20 trials/s at best on 2 cores, and 5 to 6
     under the other test runs of this machine (50 x 100 took 15 minutes);
   * ``copy``: the same trials, every study's in turn (as concurrent workers interleave
     them), their rows in one ``COPY`` per Optuna table: 100,000 trials in minutes. Optuna's
     tables are its own, not lrtune's store; Optuna reads a sample of the studies back
     afterwards and it must equal what was generated (``check_copy``);
3. ``VACUUM ANALYZE``, and one ``GET /studies`` through the API, which marks the studies
   ``done`` as a worker's last finish would.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import optuna
import psycopg
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)
from optuna.trial import FrozenTrial, TrialState

from lrtune.client import Client
from lrtune.dashboard import curve_artifact_attr
from lrtune.space import SearchSpace
from lrtune.spec import StudySpec
from lrtune.study import (
    ATTR_CONFIG,
    ATTR_LR_CURVE,
    ATTR_METRICS,
    ATTR_REASON,
    ATTR_STEPS_PER_EPOCH,
)
from lrtune.tasks import task_info

ROOT = Path(__file__).resolve().parents[1]
PG = "postgresql://postgres@127.0.0.1:5432"
ADMIN = f"{PG}/postgres"
# A fresh database's loss scale per task: (first epoch, a good last epoch).
LOSS = {"linreg": (8.0, 0.01), "digits-mlp": (2.3, 0.08)}


def url_of(db: str) -> str:
    return f"{PG}/{db}"


def template_name(studies: int, trials: int, method: str) -> str:
    return f"lrtune_bench_api_{studies}x{trials}_{method}"


def admin(sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        cur = conn.execute(sql, args or None)
        return cur.fetchall() if cur.description else []


def drop_database(db: str) -> None:
    admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
          "WHERE datname = %s AND pid <> pg_backend_pid()", db)
    admin(f'DROP DATABASE IF EXISTS "{db}"')


def fill_info(db: str) -> dict[str, Any] | None:
    """How a template was filled, or None when there is no such database."""
    rows = admin("SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                 "WHERE datname = %s", db)
    if not rows:
        return None
    info: dict[str, Any] = json.loads(rows[0][0] or "{}")
    return info


def clone(template: str, db: str) -> str:
    """A copy of ``template`` (a file copy in PostgreSQL, seconds even at 100,000 trials)."""
    drop_database(db)
    admin(f'CREATE DATABASE "{db}" TEMPLATE "{template}"')
    return url_of(db)


def study_spec(i: int, trials: int) -> dict[str, Any]:
    """Study ``i``'s spec: even ones ``linreg`` (default space), odd ones ``digits-mlp``."""
    spec: dict[str, Any] = {"name": f"api-load-{i:03d}", "n_trials": trials,
                            "sampler": {"name": "tpe", "seed": i},
                            "pruner": {"name": "percentile"}, "seed": i}
    if i % 2 == 0:
        return spec | {"task": "linreg", "epochs": 10}
    return spec | {"task": "digits-mlp", "epochs": 20, "space": {
        "families": ["step", "cosine", "cosine_restarts", "onecycle", "wsd", "plateau"],
        "optimizers": ["momentum", "adamw"], "lr": {"low": 1e-4, "high": 1.0},
        "warmup": "search", "weight_decay": {"low": 1e-6, "high": 1e-2},
        "batch_size": [32, 64, 128]}}


class Draw:
    """Stands in for an Optuna trial while ``SearchSpace.sample`` runs: draws each parameter
    as Optuna's random sampler does and keeps the distributions Optuna would store."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.params: dict[str, Any] = {}
        self.distributions: dict[str, BaseDistribution] = {}

    def _keep(self, name: str, value: Any, dist: BaseDistribution) -> None:
        self.params[name], self.distributions[name] = value, dist

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
        value = self.rng.choice(choices)
        self._keep(name, value, CategoricalDistribution(choices))
        return value

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        u = self.rng.random()
        value = min(max(low * (high / low) ** u if log else low + u * (high - low), low), high)
        self._keep(name, value, FloatDistribution(low, high, log=log))
        return value

    def suggest_int(self, name: str, low: int, high: int, *, log: bool = False) -> int:
        value = (round(math.exp(self.rng.uniform(math.log(low), math.log(high)))) if log
                 else self.rng.randint(low, high))
        value = min(max(value, low), high)
        self._keep(name, value, IntDistribution(low, high, log=log))
        return value


def space_of(spec: StudySpec) -> SearchSpace:
    return SearchSpace(spec.space, task_info(spec.task).direction(spec.objective))


def trial_of(spec: StudySpec, space: SearchSpace, n_train: int, rng: random.Random
             ) -> tuple[FrozenTrial, TrialState]:
    """A RUNNING trial as a worker leaves it before finishing, and the state it ends in."""
    draw = Draw(rng)
    config = space.sample(draw)
    info = task_info(spec.task)
    spe = math.ceil(n_train / (config.batch_size or info.batch_size))
    fate, epochs = rng.random(), spec.epochs
    ran = (epochs if fate < 0.65 else rng.randint(max(1, epochs // 4), epochs - 1)
           if fate < 0.95 else rng.randint(1, max(1, epochs // 2)))
    first, best = LOSS[spec.task]
    floor = best * (1 + 4 * rng.random() ** 2)
    tau = rng.uniform(1.0, epochs / 2)
    values = [floor + (first - floor) * math.exp(-e / tau) * rng.uniform(0.97, 1.03)
              for e in range(ran)]
    lrs = []
    for e in range(ran):  # the LR at each epoch's first step, as the worker reports it
        try:
            lrs.append(config.schedule.lr(e * spe, epochs * spe, spe, config.optimizer.lr,
                                          values[:e]))
        except Exception:  # noqa: BLE001 - a schedule refusing this horizon: keep the base LR
            lrs.append(config.optimizer.lr)
    last = values[-1]
    metrics = {m: last * (0.9 if m == "train_loss" else 1.0) for m in info.metrics}
    if "val_acc" in metrics:
        metrics["val_acc"] = max(0.0, 1.0 - last / 2.5)
    attrs: dict[str, Any] = {ATTR_CONFIG: config.to_dict(), ATTR_STEPS_PER_EPOCH: spe}
    state = TrialState.COMPLETE if fate < 0.65 else TrialState.PRUNED
    if fate >= 0.95:  # diverged: the epoch that blew up is not reported, its metrics are kept
        metrics = {m: math.nan for m in metrics}
    attrs |= {ATTR_METRICS: metrics, ATTR_LR_CURVE: lrs}
    if state == TrialState.PRUNED:
        attrs[ATTR_REASON] = "diverged" if fate >= 0.95 else "pruned"
    trial = FrozenTrial(number=0, trial_id=0, state=TrialState.RUNNING, value=None, values=None,
                        datetime_start=datetime.now(), datetime_complete=None,
                        params=draw.params, distributions=draw.distributions,
                        user_attrs=attrs, system_attrs={},
                        intermediate_values=dict(enumerate(values)))
    return trial, state


_storage: optuna.storages.RDBStorage | None = None


def _fill_study(job: tuple[str, int, dict[str, Any], int, int]) -> tuple[int, float]:
    """Worker process: one study's trials, each as a worker writes it (created RUNNING, its
    curve artifact attribute, its end: three transactions)."""
    global _storage
    url, seed, raw, trials, n_train = job
    if _storage is None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        _storage = optuna.storages.RDBStorage(  # commits need not wait for the disk here
            url.replace("postgresql://", "postgresql+psycopg://"),
            engine_kwargs={"connect_args": {"options": "-c synchronous_commit=off"}})
    start = time.perf_counter()
    spec = StudySpec.model_validate(raw)
    space = space_of(spec)
    study_id = _storage.get_study_id_from_name(spec.name)
    rng = random.Random(seed)
    number = None
    for _ in range(trials):
        template, state = trial_of(spec, space, n_train, rng)
        trial_id = _storage.create_new_trial(study_id, template_trial=template)
        # this process alone adds to this study: the numbers follow on from the first
        number = _storage.get_trial_number_from_id(trial_id) if number is None else number + 1
        _storage.set_trial_system_attr(trial_id, *curve_artifact_attr(study_id, trial_id,
                                                                      number))
        values = list(template.intermediate_values.values())
        _storage.set_trial_state_values(trial_id, state, values[-1:])
    return trials, time.perf_counter() - start


def _quiet_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    os.nice(10)  # other people's test runs share these cores


def fill_with_optuna(url: str, specs: list[dict[str, Any]], trials: int, sizes: dict[str, int],
                     procs: int) -> None:
    jobs = [(url, i, spec, trials, sizes[spec["task"]]) for i, spec in enumerate(specs, 1)]
    jobs.sort(key=lambda job: job[2]["task"] != "digits-mlp")  # the slower ones first
    done, start = 0, time.perf_counter()
    with mp.get_context("spawn").Pool(procs, initializer=_quiet_worker) as pool:
        for n, _ in pool.imap_unordered(_fill_study, jobs):
            done += n
            rate = done / (time.perf_counter() - start)
            print(f"  filled {done}/{len(specs) * trials} trials ({rate:.0f}/s)", flush=True)


COPY_COLUMNS = {
    "trials": "trial_id, number, study_id, state, datetime_start, datetime_complete",
    "trial_params": "trial_id, param_name, param_value, distribution_json",
    "trial_values": "trial_id, objective, value, value_type",
    "trial_intermediate_values": "trial_id, step, intermediate_value, intermediate_value_type",
    "trial_user_attributes": "trial_id, key, value_json",
    "trial_system_attributes": "trial_id, key, value_json"}
ROUNDS = 50  # trials per study generated and copied at once


def _stored(value: float) -> tuple[float | None, str]:
    """A float as Optuna stores it: the value, or NULL and its kind."""
    if math.isnan(value):
        return None, "NAN"
    if math.isinf(value):
        return None, "INF_POS" if value > 0 else "INF_NEG"
    return value, "FINITE"


def _rows(trial_id: int, number: int, study_id: int, trial: FrozenTrial, state: TrialState,
          rows: dict[str, list[tuple[Any, ...]]]) -> None:
    """Append one trial's rows, table by table, as Optuna's storage writes them."""
    steps = trial.intermediate_values
    assert trial.datetime_start is not None
    finished = trial.datetime_start + timedelta(seconds=len(steps))
    rows["trials"].append((trial_id, number, study_id, state.name, trial.datetime_start,
                           finished))
    for name, value in trial.params.items():
        dist = trial.distributions[name]
        rows["trial_params"].append((trial_id, name, dist.to_internal_repr(value),
                                     distribution_to_json(dist)))
    rows["trial_values"].append((trial_id, 0, *_stored(steps[max(steps)])))
    for step, value in steps.items():
        rows["trial_intermediate_values"].append((trial_id, step, *_stored(value)))
    for key, attr in trial.user_attrs.items():
        rows["trial_user_attributes"].append((trial_id, key, json.dumps(attr)))
    key, meta = curve_artifact_attr(study_id, trial_id, number)
    rows["trial_system_attributes"].append((trial_id, key, json.dumps(meta)))


def fill_with_copy(url: str, specs: list[dict[str, Any]], trials: int,
                   sizes: dict[str, int]) -> None:
    """Every study's trials in turn, ``ROUNDS`` per study at a time, by COPY."""
    with psycopg.connect(url) as conn:
        ids: dict[str, int] = dict(conn.execute(
            "SELECT study_name, study_id FROM studies").fetchall())
        studies = []
        for i, raw in enumerate(specs, 1):
            spec = StudySpec.model_validate(raw)
            studies.append((ids[spec.name], spec, space_of(spec),
                            random.Random(i), sizes[spec.task]))
        start = time.perf_counter()
        for first in range(0, trials, ROUNDS):
            rounds = min(ROUNDS, trials - first)
            trial_ids = iter(r[0] for r in conn.execute(
                "SELECT nextval(pg_get_serial_sequence('trials', 'trial_id')) "
                "FROM generate_series(1, %s)", (rounds * len(studies),)))
            rows: dict[str, list[tuple[Any, ...]]] = {table: [] for table in COPY_COLUMNS}
            for number in range(first, first + rounds):
                for study_id, spec, space, rng, n_train in studies:
                    trial, state = trial_of(spec, space, n_train, rng)
                    _rows(next(trial_ids), number, study_id, trial, state, rows)
            with conn.cursor() as cur:
                for table, columns in COPY_COLUMNS.items():
                    with cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                        for row in rows[table]:
                            copy.write_row(row)
            conn.commit()
            done = (first + rounds) * len(studies)
            print(f"  filled {done}/{len(studies) * trials} trials "
                  f"({done / (time.perf_counter() - start):.0f}/s)", flush=True)


def check_copy(url: str, specs: list[dict[str, Any]], sizes: dict[str, int],
               sample: int = 20) -> None:
    """Optuna reads back the first ``sample`` trials of the first two studies: they must be
    the trials generated (same numbers, states, values, params, curves, attributes)."""
    storage = optuna.storages.RDBStorage(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        for i, raw in enumerate(specs[:2], 1):
            spec = StudySpec.model_validate(raw)
            space, rng = space_of(spec), random.Random(i)
            study = optuna.load_study(study_name=spec.name, storage=storage)
            study_id = storage.get_study_id_from_name(spec.name)
            for got in study.get_trials(deepcopy=False)[:sample]:
                trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, got.number)
                want, state = trial_of(spec, space, sizes[spec.task], rng)
                steps = want.intermediate_values
                same = (got.state == state and got.value == steps[max(steps)]
                        and got.params == want.params
                        and got.distributions == want.distributions
                        and got.intermediate_values == steps
                        and json.dumps(got.user_attrs, sort_keys=True)
                        == json.dumps(want.user_attrs, sort_keys=True)
                        and got.system_attrs == dict([curve_artifact_attr(
                            study_id, trial_id, got.number)]))
                if not same:
                    raise RuntimeError(f"{spec.name} trial {got.number}: Optuna reads back "
                                       f"{got} instead of {want} ({state})")
    finally:
        storage.engine.dispose()


def train_sizes() -> dict[str, int]:
    """Training examples per task (steps per epoch depend on them and the batch size)."""
    from lrtune_worker.tasks import get_task

    return {name: len(get_task(name).data().x_train) for name in LOSS}


def fill(studies: int, trials: int, method: str, procs: int, commit: str,
         serve: Any) -> dict[str, Any]:
    """Build the template database for ``studies`` x ``trials`` and return how it went.

    ``serve(url)`` is a context manager running the API on ``url`` and yielding its base URL.
    """
    template = template_name(studies, trials, method)
    building = f"{template}_building"
    drop_database(building)
    admin(f'CREATE DATABASE "{building}"')
    url = url_of(building)
    seconds: dict[str, float] = {}
    try:
        start = time.perf_counter()
        env = os.environ | {"LRTUNE_DATABASE_URL": url}
        token = subprocess.run([sys.executable, "-m", "lrtune", "token", "create", "--name",
                                "api-load"], env=env, cwd=ROOT, check=True,
                               capture_output=True, text=True).stdout.strip()
        specs = [study_spec(i, trials) for i in range(1, studies + 1)]
        with serve(url) as base:
            client = Client(base, token)
            for spec in specs:
                client.submit(spec)
        seconds["studies"] = time.perf_counter() - start

        start = time.perf_counter()
        sizes = train_sizes()
        if method == "copy":
            fill_with_copy(url, specs, trials, sizes)
            check_copy(url, specs, sizes)
        else:
            fill_with_optuna(url, specs, trials, sizes, procs)
        seconds["trials"] = time.perf_counter() - start

        start = time.perf_counter()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
        with serve(url) as base:  # read once (before 9a218db, a study's first read marked it done)
            httpx.get(f"{base}/studies?limit={studies}", timeout=600).raise_for_status()
        seconds["settle"] = time.perf_counter() - start
    except BaseException:
        drop_database(building)
        raise
    info = {"studies": studies, "trials_per_study": trials, "method": method,
            "commit": commit, "procs": procs if method == "optuna" else 1,
            "seconds": {k: round(v, 1) for k, v in seconds.items()},
            "when": datetime.now().isoformat(timespec="seconds")}
    drop_database(template)
    admin(f'ALTER DATABASE "{building}" RENAME TO "{template}"')
    admin(f"COMMENT ON DATABASE \"{template}\" IS '{json.dumps(info)}'")
    return info
