"""Soak: N simulated workers over HTTP against API replicas on one PostgreSQL database.

    python bench/fleet.py --workers 100,300,1000     # the issue's sizes
    python bench/fleet.py --workers 20 --seconds 10  # a smoke run, about a minute

A simulated worker is an asyncio task holding a worker token and no database access: claim one
trial, heartbeat it, report ``--epochs`` made-up epochs (a decreasing value with noise, an LR),
stop when pruned, else finish COMPLETE. With probability ``--kill`` it disappears mid-trial (no
finish, no release, no heartbeat: a SIGKILL) and a new worker starts a second later; the trial
must be reaped as lost and re-run. A 503 (admission control) is retried after its Retry-After
with jitter; an empty claim (204) backs off exponentially, with jitter.

Pacing: ``--epoch-seconds``, ``--heartbeat`` (the servers' interval; grace is 3 intervals) and
the longest idle backoff (5 s) are those of 100 workers; with N workers each is multiplied by
N / 100 (never less), so the fleet offers the servers about the same requests per second at
every N and N measures concurrency (connections, leases, pollers), not overload.

For each N: a fresh database, ``--replicas`` ``lrtune serve --workers 0`` with small fixed
pools, the workers split across them, ``--studies`` linreg studies (random sampler: coordination
is measured, not TPE) of max(N, what the fleet finishes in ``--seconds``) trials in all; a
separate process counts ``pg_stat_activity`` connections every 25 ms. Then the database is
checked: every study done with exactly its budget COMPLETE + PRUNED, nothing RUNNING or WAITING,
no (study, number) twice, each abandoned trial FAIL "lost" with a copy that ended COMPLETE or
PRUNED. One JSON line per N in bench/results/fleet.jsonl (with the machine), then a table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import random
import resource
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
import psycopg  # noqa: E402

from bench.api_load import free_port, spawn, stop  # noqa: E402
from bench.machine import machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "fleet.jsonl"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
OWNER, WORKER = "fleet-owner", "fleet-worker"
Key = tuple[int, int]  # (study id, trial number)


@dataclass
class Fleet:
    """How the simulated workers behave, what they saw, and when to stop."""

    epochs: int
    epoch_seconds: float
    idle_max: float
    kill: float
    rng: random.Random
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    claim_ms: list[float] = field(default_factory=list)  # each 201's own request
    empty: int = 0  # 204 answers
    shed: Counter[str] = field(default_factory=Counter)  # 503s by error code, retried
    errors: Counter[str] = field(default_factory=Counter)  # transport errors, retried
    claimed: Counter[Key] = field(default_factory=Counter)
    ended: Counter[Key] = field(default_factory=Counter)  # finished, or pruned by the server
    abandoned: list[Key] = field(default_factory=list)  # disappearances
    conflicts: int = 0  # 409 to a live worker: its trial was reaped (late heartbeats)


async def call(fleet: Fleet, http: httpx.AsyncClient, path: str,
               body: dict[str, Any] | None = None) -> httpx.Response:
    """POST until answered with something other than 503 (or a transport error); the
    answer's ``elapsed`` is that of the last attempt."""
    while True:
        try:
            r = await http.post(path, json=body)
        except httpx.TransportError as error:
            fleet.errors[type(error).__name__] += 1
            await asyncio.sleep(fleet.rng.uniform(0.5, 1.5))
            continue
        if r.status_code != 503:
            return r
        with contextlib.suppress(ValueError, KeyError, TypeError):
            fleet.shed[r.json()["error"]["code"]] += 1
        await asyncio.sleep(float(r.headers.get("Retry-After", 1)) * fleet.rng.uniform(1, 2))


async def beat(fleet: Fleet, http: httpx.AsyncClient, lease: int, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        await call(fleet, http, f"/v1/leases/{lease}/heartbeat")


async def run_trial(fleet: Fleet, http: httpx.AsyncClient, lease: dict[str, Any]) -> bool:
    """One claimed trial to its end; False when the worker disappeared during it."""
    key = (int(lease["study"]["id"]), int(lease["trials"][0]["number"]))
    base, number = f"/v1/leases/{lease['lease']}", key[1]
    dies_at = fleet.rng.randrange(fleet.epochs) if fleet.rng.random() < fleet.kill else None
    lr, value = fleet.rng.uniform(1e-3, 1e-2), fleet.rng.uniform(1.0, 2.0)
    heart = asyncio.create_task(beat(fleet, http, lease["lease"],
                                     float(lease["heartbeat_interval"])))
    try:
        for epoch in range(fleet.epochs):
            await asyncio.sleep(fleet.epoch_seconds * fleet.rng.uniform(0.8, 1.2))
            if epoch == dies_at:
                fleet.abandoned.append(key)
                return False
            value *= fleet.rng.uniform(0.8, 1.0)
            r = await call(fleet, http, f"{base}/report", {"epoch": epoch, "trials": [
                {"number": number, "value": value, "lr": lr}]})
            if r.status_code == 409:
                fleet.conflicts += 1
                return True
            r.raise_for_status()
            if number in r.json()["pruned"]:
                fleet.ended[key] += 1
                return True
        r = await call(fleet, http, f"{base}/finish", {"trials": [
            {"number": number, "state": "COMPLETE", "value": value}]})
        if r.status_code == 409:
            fleet.conflicts += 1
        else:
            r.raise_for_status()
            fleet.ended[key] += 1
        return True
    finally:
        heart.cancel()


async def worker(fleet: Fleet, http: httpx.AsyncClient) -> None:
    """Claim and run trials until told to stop; a disappearance starts a new worker."""
    idle = 0.2
    while not fleet.stop.is_set():
        r = await call(fleet, http, "/v1/leases", {"study_id": None, "count": 1})
        if r.status_code == 204:
            fleet.empty += 1
            await asyncio.sleep(idle * fleet.rng.uniform(0.5, 1.5))
            idle = min(idle * 2, fleet.idle_max)
            continue
        r.raise_for_status()
        fleet.claim_ms.append(r.elapsed.total_seconds() * 1000)
        idle, lease = 0.2, r.json()
        fleet.claimed[(int(lease["study"]["id"]), int(lease["trials"][0]["number"]))] += 1
        if not await run_trial(fleet, http, lease):
            await asyncio.sleep(1.0)  # the new worker process starting


def sample_connections(dsn: str, done: Any, out: Any) -> None:
    """Peak connections to the database (other than this one), every 25 ms, in a process of
    its own so that the fleet's event loop cannot delay it, it and its database backend
    scheduled ahead of the servers (``ahead``) so that a loaded CPU delays it less."""
    peak, samples, gap, last = 0, 0, 0.0, time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()
        kinds = {ahead(pid) for pid in (0, int(backend[0]) if backend else 0)}
        while not done.is_set():
            n = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                             "current_database() AND pid <> pg_backend_pid()").fetchone()
            peak, samples = max(peak, int(n[0]) if n else 0), samples + 1
            now = time.monotonic()
            gap, last = max(gap, now - last), now
            time.sleep(max(0.0, 0.025 - (time.monotonic() - now)))
    out.send({"peak": peak, "samples": samples, "max_gap_ms": round(gap * 1000),
              "sampler_priority": max(kinds)})  # the weaker of the two


def ahead(pid: int) -> str:
    """Schedule process ``pid`` (0: this one) before the others: real-time (SCHED_FIFO: it
    runs as soon as it wakes; it sleeps 25 ms a sample, so it cannot starve the rest) where
    allowed (root), else niced ahead, else as it is. The kind given."""
    try:
        os.sched_setscheduler(pid, os.SCHED_FIFO, os.sched_param(10))
        return "fifo"
    except (OSError, AttributeError):
        try:
            os.setpriority(os.PRIO_PROCESS, pid, -10)
            return "nice"
        except OSError:
            return "none"


ATTR = ("(SELECT value_json FROM trial_user_attributes a WHERE a.trial_id = t.trial_id "
        "AND a.key = '{}')")


def check(dsn: str, fleet: Fleet) -> dict[str, Any]:
    """What the database says once the fleet has stopped."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT s.id, s.status, s.n_trials, t.number, t.state::text, "
            f"{ATTR.format('reason')}, {ATTR.format('retry_of')} FROM lrtune_studies s "
            "JOIN studies o ON o.study_name = s.name JOIN trials t ON t.study_id = o.study_id"
        ).fetchall()
    studies: dict[int, tuple[str, int]] = {}
    states: Counter[tuple[int, str]] = Counter()
    numbers: Counter[Key] = Counter()
    trials: dict[Key, tuple[str, str]] = {}
    copy_of: dict[Key, Key] = {}
    for sid, status, budget, number, state, reason, retry_of in rows:
        studies[sid] = (status, budget)
        states[(sid, state)] += 1
        numbers[(sid, number)] += 1
        trials[(sid, number)] = (state, json.loads(reason) if reason else "")
        if retry_of is not None:
            copy_of[(sid, json.loads(retry_of))] = (sid, number)

    def rerun(key: Key) -> bool:  # its copy, or its copy's copy, ended COMPLETE or PRUNED
        while (key := copy_of.get(key, (-1, -1))) in trials:
            if trials[key][0] in ("COMPLETE", "PRUNED"):
                return True
        return False

    lost = {k for k, (state, reason) in trials.items()
            if state == "FAIL" and reason.startswith("lost")}
    return {
        "budgets_exact": all(
            status == "done" and states[(sid, "COMPLETE")] + states[(sid, "PRUNED")] == budget
            and not states[(sid, "RUNNING")] + states[(sid, "WAITING")]
            for sid, (status, budget) in studies.items()),
        "statuses": dict(Counter(status for status, _ in studies.values())),
        "complete": sum(n for (_, s), n in states.items() if s == "COMPLETE"),
        "pruned": sum(n for (_, s), n in states.items() if s == "PRUNED"),
        "duplicates": sum(n - 1 for c in (numbers, fleet.claimed, fleet.ended)
                          for n in c.values() if n > 1),
        "lost_reaped": len(lost), "lost_rerun": sum(rerun(k) for k in lost),
        "disappeared": len(fleet.abandoned),
        "disappeared_reaped": sum(k in lost for k in fleet.abandoned),
        "disappeared_rerun": sum(k in lost and rerun(k) for k in fleet.abandoned)}


async def drive(n: int, urls: list[str], fleet: Fleet, timeout: float) -> float:
    """Run n workers across the replicas until every study has ended; the seconds it took."""
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    clients = [httpx.AsyncClient(base_url=u, timeout=120, limits=limits,
                                 headers={"Authorization": f"Bearer {WORKER}"}) for u in urls]
    start = time.monotonic()

    async def one(i: int) -> None:
        await asyncio.sleep(i * 0.002)  # a fleet starting up, not all in one instant
        await worker(fleet, clients[i % len(clients)])

    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    async with httpx.AsyncClient(base_url=urls[0], timeout=60) as watch:
        while time.monotonic() - start < timeout and not any(t.done() for t in tasks):
            await asyncio.sleep(1.0)
            with contextlib.suppress(httpx.HTTPError):
                r = await watch.get("/studies", params={"limit": 1, "status": "running"})
                if r.status_code == 200 and r.json()["total"] == 0:
                    break
    took = time.monotonic() - start
    fleet.stop.set()
    for t in tasks:
        t.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for c in clients:
        await c.aclose()
    if failed := [r for r in results if not isinstance(r, asyncio.CancelledError | None)]:
        raise RuntimeError(f"{len(failed)} workers failed: {failed[0]!r}")
    return took


def wait_ready(url: str, proc: subprocess.Popen[Any], tmp: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not start; see the logs in {tmp}")


def run(n: int, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    scale = max(1.0, n / 100)
    beat_s = max(1, round(args.heartbeat * scale))
    fleet = Fleet(args.epochs, args.epoch_seconds * scale, 5.0 * scale, args.kill,
                  random.Random(n))
    budget = max(n, round(args.seconds * n / (args.epochs * fleet.epoch_seconds)))
    name, load = f"lrtune_fleet_{uuid.uuid4().hex[:8]}", os.getloadavg()[0]
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    dsn = f"postgresql://postgres@127.0.0.1:5432/{name}"
    env = os.environ | {
        "LRTUNE_DATABASE_URL": dsn, "LRTUNE_API_TOKENS": OWNER, "LRTUNE_WORKER_TOKENS": WORKER,
        "LRTUNE_DB_POOL_SIZE": str(args.pool), "LRTUNE_DB_MAX_OVERFLOW": str(args.overflow),
        "LRTUNE_HEARTBEAT_INTERVAL": str(beat_s), "LRTUNE_HEARTBEAT_GRACE": str(3 * beat_s),
        "LRTUNE_MAX_RETRIES": "1000", "LRTUNE_MAX_FAILURES": "100000",
        "LRTUNE_MAX_INFLIGHT": str(args.inflight)}
    ports = [free_port() for _ in range(args.replicas)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    procs: list[subprocess.Popen[Any]] = []
    ctx = mp.get_context("spawn")
    done, (mine, theirs) = ctx.Event(), ctx.Pipe()
    sampler = ctx.Process(target=sample_connections, args=(dsn, done, theirs))
    sampler.start()
    try:  # replicas start together on the empty database, as a Deployment's pods do
        for port in ports:
            with (tmp / f"api{port}.log").open("a") as log:
                procs.append(spawn([sys.executable, "-m", "lrtune", "serve", "--workers", "0",
                                    "--port", str(port)], env=env, cwd=ROOT, stdout=log,
                                   stderr=subprocess.STDOUT))
        for url, proc in zip(urls, procs, strict=True):
            wait_ready(url, proc, tmp)
        for i in range(args.studies):
            httpx.post(f"{urls[0]}/studies", headers={"Authorization": f"Bearer {OWNER}"},
                       timeout=60, json={
                           "name": f"fleet-{i}", "task": "linreg", "epochs": args.epochs,
                           "n_trials": budget // args.studies + (i < budget % args.studies),
                           "sampler": {"name": "random"},
                           "space": {"lr": {"low": 1e-3, "high": 1e-2}}}).raise_for_status()
        took = asyncio.run(drive(n, urls, fleet, 20 * args.seconds + 60 * scale + 300))
        done.set()
        connections = mine.recv() if mine.poll(30) else {}
        checked = check(dsn, fleet)
    finally:
        done.set()
        sampler.join(30)
        for proc in procs:
            stop(proc)
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = %s", (name,))
            admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
    ms = sorted(fleet.claim_ms) or [0.0]
    return {
        "bench": "fleet", "workers": n, "budget": budget, "load_before": load,
        **{k: v for k, v in vars(args).items() if k not in ("workers", "out", "seconds")},
        "epoch_s": fleet.epoch_seconds, "heartbeat_s": beat_s, "grace_s": 3 * beat_s,
        "seconds": round(took, 1),
        "trials_per_s": round((checked["complete"] + checked["pruned"]) / took, 2),
        "claim_p50_ms": round(statistics.median(ms), 1),
        "claim_p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 1),
        "claims": len(fleet.claim_ms), "empty_claims": fleet.empty, "shed_503": dict(fleet.shed),
        "transport_errors": dict(fleet.errors), "conflicts_409": fleet.conflicts,
        "connections": connections,
        "connection_limit": args.replicas * 2 * (args.pool + args.overflow),  # 2 engines
        **checked}


def context() -> dict[str, Any]:
    """The machine, PostgreSQL's version and lrtune's commit."""
    with psycopg.connect(PG_ADMIN) as conn:
        pg = conn.execute("SHOW server_version").fetchone()
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    return {**machine(), "postgres": pg[0] if pg else None, "lrtune_commit": commit}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="100,300,1000", help="N, comma-separated")
    parser.add_argument("--seconds", type=float, default=60,
                        help="size the budget to about this long a run (at least N trials)")
    parser.add_argument("--epoch-seconds", type=float, default=2.0, help="at 100 workers")
    parser.add_argument("--heartbeat", type=float, default=5.0, help="at 100 workers")
    parser.add_argument("--kill", type=float, default=0.02,
                        help="probability that a worker disappears during a trial")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--studies", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--pool", type=int, default=6,
                        help="LRTUNE_DB_POOL_SIZE: connections kept per engine (2 per replica)")
    parser.add_argument("--overflow", type=int, default=0, help="LRTUNE_DB_MAX_OVERFLOW")
    parser.add_argument("--inflight", type=int, default=4,
                        help="LRTUNE_MAX_INFLIGHT: below pool + overflow (bench/README.md)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # as Ctrl-C: servers stopped
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # 1,000 sockets and more
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    info, tmp = context(), Path(os.environ.get("TMPDIR", "/tmp")) / f"fleet-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    print(f"server logs in {tmp}", flush=True)
    rows = []
    for n in (int(x) for x in args.workers.split(",")):
        rows.append(run(n, args, tmp) | {"machine": info})
        with args.out.open("a") as f:
            f.write(json.dumps(rows[-1]) + "\n")
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "machine"}), flush=True)
    print("\n| N | trials/s | claim p50 / p99 ms | peak DB connections (limit) | duplicates "
          "| disappeared → reaped → re-run | lost in all | budgets exact |\n"
          "|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['workers']} | {r['trials_per_s']} | {r['claim_p50_ms']} / "
              f"{r['claim_p99_ms']} | {r['connections'].get('peak')} ({r['connection_limit']})"
              f" | {r['duplicates']} | {r['disappeared']} → {r['disappeared_reaped']} → "
              f"{r['disappeared_rerun']} | {r['lost_reaped']} | {r['budgets_exact']} |")


if __name__ == "__main__":
    main()
