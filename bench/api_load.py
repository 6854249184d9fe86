"""The API's read path under load: GET endpoints against a bare one, with hey, on PostgreSQL.

    python bench/api_load.py                        # 50 studies x 100 trials, 50 and 200 clients
    python bench/api_load.py --trials 100,2000      # and 50 x 2,000 (100,000 trials)
    python bench/api_load.py --studies 5 --trials 20 --clients 20 --duration 5 \\
        --endpoints studies,study                   # a smoke run, about a minute

Each size is a template database filled once (``bench/api_fill.py``: studies through the REST
API, finished trials through Optuna) and cloned for each run. The server is ``lrtune serve
--workers 0`` with a bare endpoint beside lrtune's (``bench/api_server.py``), pinned to one
core (``--server-core``); hey runs on the other (``--load-core``). For each number of clients
the endpoints take turns with the bare one (bare, E1, bare, E2, …, bare: each endpoint's 200
answers per second are compared with the mean of the bare runs around it), each run
``--duration`` seconds with hey's ``-t`` timeout, while a second hey asks ``/healthz`` at a
low rate. Between runs the server drains what hey gave up on; one that does not within
``--drain`` seconds is restarted.

From hey's CSV (answered requests only): 200 answers per second, p50/p99 of the 200 answers,
other answers by status (503 = shed load; other 5xx); from the server's request counter: the
requests hey got no answer to (timeouts, resets). One JSON line per (size, endpoint, clients)
in bench/results/api_load.jsonl, then a markdown table with the issue's targets.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402

from bench import api_fill  # noqa: E402
from bench.api_server import BARE, REQUESTS  # noqa: E402
from bench.machine import machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "api_load.jsonl"
ENDPOINTS = {"studies": "/studies?limit=50", "study": "/studies/{id}",
             "trials": "/studies/{id}/trials?limit=50", "best": "/studies/{id}/best"}
VS_BARE = {"study": 0.5, "studies": 0.25, "trials": 0.25}  # the share of bare's 200/s
CHILDREN: set[subprocess.Popen[Any]] = set()


def stop(proc: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL to the process group it leads (started with a session of its
    own, so only its processes)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    CHILDREN.discard(proc)


def spawn(cmd: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
    proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
    CHILDREN.add(proc)
    return proc


def pinned(core: int | None) -> list[str]:
    return ["taskset", "-c", str(core)] if core is not None else []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``bench.api_server`` on one database, on its own core; restartable."""

    def __init__(self, url: str, core: int | None, log: Path, sql: bool = False) -> None:
        self.url, self.core, self.log, self.sql = url, core, log, sql
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[Any] | None = None
        self.http = httpx.Client()

    def start(self) -> None:
        env = os.environ | {"LRTUNE_DATABASE_URL": self.url,
                            # one principal owns every study of the bench
                            "LRTUNE_MAX_RUNNING_STUDIES": "100000",
                            "LRTUNE_MAX_QUEUED_TRIALS": "1000000000"}
        if self.sql:
            env["LRTUNE_BENCH_SQL"] = "1"
        cmd = [*pinned(self.core), sys.executable, "-m", "bench.api_server", "--host",
               "127.0.0.1", "--port", str(self.port), "--workers", "0"]
        with self.log.open("a") as log:
            self.proc = spawn(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        self.http = httpx.Client(base_url=self.base, timeout=600)  # one connection, kept
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}); see {self.log}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.base + REQUESTS, timeout=2).status_code == 200:
                    return
            time.sleep(0.3)
        raise RuntimeError(f"the server did not start in 120 s; see {self.log}")

    def stop(self) -> None:
        self.http.close()
        if self.proc is not None:
            stop(self.proc)
            self.proc = None

    def requests(self) -> dict[str, Any]:
        return self.http.get(REQUESTS, timeout=30).json()  # type: ignore[no-any-return]

    def drain(self, limit: float) -> float | None:
        """Seconds until no request is being handled; None if it takes over ``limit``."""
        start = time.monotonic()
        while time.monotonic() - start < limit:
            with contextlib.suppress(httpx.HTTPError):
                if not self.requests()["active"]:
                    return round(time.monotonic() - start, 1)
            time.sleep(0.5)
        return None


@contextlib.contextmanager
def serving(url: str, core: int | None, log: Path) -> Iterator[str]:
    server = Server(url, core, log)
    try:
        server.start()
        yield server.base
    finally:
        server.stop()


def hey(url: str, duration: int, clients: int, timeout: int, core: int | None, out: Path,
        qps: float | None = None) -> subprocess.Popen[Any]:
    cmd = [*pinned(core), "hey", "-z", f"{duration}s", "-c", str(clients), "-t", str(timeout),
           "-o", "csv", *(["-q", str(qps)] if qps else []), url]
    with out.open("w") as f:
        return spawn(cmd, stdout=f, stderr=subprocess.DEVNULL)


def answers(out: Path) -> list[tuple[float, int]]:
    """(seconds, status) of each answered request in hey's CSV."""
    rows = csv.DictReader(io.StringIO(out.read_text()))
    return [(float(r["response-time"]), int(r["status-code"])) for r in rows]


def quantile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def figures(rows: list[tuple[float, int]], received: int | None, duration: float
            ) -> dict[str, Any]:
    """200/s, p50/p99 of 200 answers (ms), other answers by status, unanswered requests."""
    ok = sorted(t for t, status in rows if status == 200)
    statuses = Counter(str(status) for _, status in rows)
    unanswered = max(0, received - len(rows)) if received is not None else None
    asked = len(rows) + (unanswered or 0)
    ms = [None if v is None else round(v * 1e3, 1) for v in
          (quantile(ok, 0.5), quantile(ok, 0.99), ok[-1] if ok else None)]
    return {"ok": len(ok), "ok_per_s": round(len(ok) / duration, 2), "p50_ms": ms[0],
            "p99_ms": ms[1], "max_ms": ms[2], "answered": len(rows), "received": received,
            "statuses": dict(statuses), "shed_503": statuses.get("503", 0),
            "other_5xx": sum(n for s, n in statuses.items() if s.startswith("5") and s != "503"),
            "unanswered": unanswered, "ok_share": round(len(ok) / asked, 4) if asked else None}


def measure(server: Server, path: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """One hey run on ``path`` (and the /healthz one beside it); the server drained after.

    The answers and the received count are kept under ``_answers`` / ``_received``.
    """
    before = server.requests()["received"]
    main = hey(server.base + path, args.duration, args.clients_now, args.timeout,
               args.load_core, tmp / "main.csv")
    side = (hey(server.base + "/healthz", args.duration, args.healthz_rps, args.timeout,
                args.load_core, tmp / "healthz.csv", qps=1) if args.healthz_rps else None)
    for proc in (main, side):
        if proc is None:
            continue
        try:
            proc.wait(args.duration + args.timeout + 30)
        except subprocess.TimeoutExpired:
            stop(proc)
            raise RuntimeError(f"hey on {path} ran past its time") from None
        CHILDREN.discard(proc)
    drained = server.drain(args.drain)
    after = server.requests()["received"]
    route = path.split("?")[0]
    rows = answers(tmp / "main.csv")
    received = after.get(route, 0) - before.get(route, 0)
    result = figures(rows, received, args.duration) | {
        "drain_s": drained, "loadavg_1m": round(os.getloadavg()[0], 2), "_answers": rows,
        "_received": received}
    if side is not None:
        health = figures(answers(tmp / "healthz.csv"),
                         after.get("/healthz", 0) - before.get("/healthz", 0), args.duration)
        result["healthz"] = {k: health[k] for k in ("ok", "p50_ms", "p99_ms", "max_ms",
                                                    "unanswered", "statuses")}
    if drained is None:  # what hey gave up on still holds the pool: start afresh
        server.stop()
        server.start()
        warm(server, args)
        result["restarted_after"] = True
    return result


def warm(server: Server, args: argparse.Namespace) -> None:
    """One request per endpoint, so each run starts with the caches a running server has."""
    for path in [*paths(args).values(), f"{BARE}?id={args.study_id}"]:
        server.http.get(path)


def paths(args: argparse.Namespace) -> dict[str, str]:
    return {e: ENDPOINTS[e].format(id=args.study_id) for e in args.endpoints}


def targets(row: dict[str, Any]) -> dict[str, bool]:
    """The issue's targets that apply to this row, met or not."""
    met: dict[str, bool] = {}
    if row["clients"] <= 50 and row["ok_share"] is not None:
        met[">=99% 200"] = row["ok_share"] >= 0.99
    if row["clients"] >= 200:
        met["0 timeouts"] = row["unanswered"] == 0
        met["0 5xx but 503"] = row["other_5xx"] == 0
        met["p99<=1s"] = row["p99_ms"] is not None and row["p99_ms"] <= 1000
    share = VS_BARE.get(row["endpoint"])
    if share is not None and row.get("vs_bare") is not None:
        met[f">={share:.0%} of bare"] = row["vs_bare"] >= share
    health = row.get("healthz")
    if health is not None and row["endpoint"] != "bare":
        met["/healthz p99<100ms"] = (health["p99_ms"] is not None and health["p99_ms"] < 100
                                     and not health["unanswered"])
    return met


def run_clients(server: Server, args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    """Bare, E1, bare, E2, …, bare at ``args.clients_now`` clients; the bare row pools the
    bare runs."""
    bare_path = f"{BARE}?id={args.study_id}"
    bares = [measure(server, bare_path, args, tmp)]
    rows = []
    for endpoint, path in paths(args).items():
        print(f"    {endpoint} at {args.clients_now} clients", flush=True)
        row = {"endpoint": endpoint, "path": path} | measure(server, path, args, tmp)
        bares.append(measure(server, bare_path, args, tmp))
        around = statistics.mean(b["ok_per_s"] for b in bares[-2:])
        row["bare_ok_per_s"] = round(around, 2)
        row["vs_bare"] = round(row["ok_per_s"] / around, 4) if around else None
        rows.append(row)
    pooled = figures([a for b in bares for a in b["_answers"]],
                     sum(b["_received"] for b in bares), len(bares) * args.duration)
    bare = {"endpoint": "bare", "path": bare_path} | pooled | {
        "turns": [{k: b[k] for k in ("ok_per_s", "p50_ms", "p99_ms", "unanswered", "drain_s",
                                     "loadavg_1m")}
                  for b in bares], "healthz": bares[0].get("healthz")}
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in [bare, *rows]]


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, text=True, capture_output=True
                          ).stdout.strip()


def commit() -> dict[str, Any]:
    """HEAD, the last commit that changed anything outside bench/ (the code measured), and
    whether tracked files differ from HEAD."""
    return {"code": git("rev-parse", "--short", "HEAD"),
            "app_code": git("log", "-1", "--format=%h", "--", ".", ":!bench"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def run_size(trials: int, args: argparse.Namespace, info: dict[str, Any], tmp: Path
             ) -> list[dict[str, Any]]:
    """Every clients level on a fresh clone of the size's template."""
    template = api_fill.template_name(args.studies, trials, args.fill_with)
    fill = api_fill.fill_info(template)
    if fill is None or args.refill:
        print(f"filling {template} ({args.studies} x {trials} trials)", flush=True)
        fill = api_fill.fill(args.studies, trials, args.fill_with, args.fill_procs,
                             info["code"], lambda url: serving(url, None, tmp / "server.log"))
        print(f"  filled in {fill['seconds']} s", flush=True)
    if args.fill_only:
        return []
    clone = f"lrtune_bench_api_run_{os.getpid()}"
    rows = []
    try:
        server = Server(api_fill.clone(template, clone), args.server_core, tmp / "server.log",
                        sql=bool(args.sql))
        try:
            server.start()
            warm(server, args)
            state = server.requests()
            settings = info["settings"] | {"pools": state["pools"], "threads": state["threads"]}
            if args.sql:
                rows += sql_profile(server, args, trials, info, fill)
            for clients in args.clients:
                args.clients_now = clients
                print(f"  {args.studies} x {trials} trials, {clients} clients", flush=True)
                for row in run_clients(server, args, tmp):
                    row = {"bench": "api_load", "studies": args.studies,
                           "trials_per_study": trials, "trials": args.studies * trials,
                           "clients": clients} | row
                    row |= {"targets": targets(row), "code": info["code"],
                            "app_code": info["app_code"], "dirty": info["dirty"],
                            "settings": settings, "fill": fill, "machine": info["machine"]}
                    with args.out.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    rows.append(row)
        finally:
            server.stop()
    finally:
        api_fill.drop_database(clone)
    return rows


def sql_profile(server: Server, args: argparse.Namespace, trials: int, info: dict[str, Any],
                fill: dict[str, Any]) -> list[dict[str, Any]]:
    """``--sql N``: N requests in a row per endpoint; statements and SQL time per request."""
    rows = []
    for endpoint, path in {"bare": f"{BARE}?id={args.study_id}", **paths(args)}.items():
        route = path.split("?")[0]
        before = server.requests()
        start = time.perf_counter()
        for _ in range(args.sql):
            server.http.get(path).raise_for_status()
        wall = (time.perf_counter() - start) / args.sql
        after = server.requests()
        statements = (after["statements"].get(route, 0) - before["statements"].get(route, 0))
        sql_s = after["sql_s"].get(route, 0) - before["sql_s"].get(route, 0)
        row = {"bench": "api_load_sql", "studies": args.studies, "trials_per_study": trials,
               "endpoint": endpoint, "path": path, "requests": args.sql,
               "ms_per_request": round(wall * 1e3, 2),
               "statements_per_request": round(statements / args.sql, 1),
               "sql_ms_per_request": round(sql_s / args.sql * 1e3, 2), "code": info["code"],
               "app_code": info["app_code"], "dirty": info["dirty"], "fill": fill,
               "machine": info["machine"]}
        print(f"    {endpoint:8} {row['ms_per_request']:9.1f} ms/request, "
              f"{row['statements_per_request']:7.1f} SQL statements "
              f"({row['sql_ms_per_request']:.1f} ms in SQL)", flush=True)
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        rows.append(row)
    return rows


def healthz_cell(health: dict[str, Any] | None) -> str | None:
    if not health:
        return None
    p99 = "-" if health["p99_ms"] is None else str(health["p99_ms"])
    return p99 + (f" ({health['unanswered']} no answer)" if health["unanswered"] else "")


def table(rows: list[dict[str, Any]]) -> str:
    def cell(v: Any) -> str:
        return "-" if v is None else f"{v:,}" if isinstance(v, int) else str(v)

    lines = ["| trials | endpoint | clients | 200/s | p50 ms | p99 ms | 200 share | 503 "
             "| other 5xx | no answer | vs bare | /healthz p99 ms | targets missed |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["bench"] != "api_load":
            continue
        missed = [name for name, ok in r["targets"].items() if not ok]
        health = r.get("healthz")
        lines.append("| " + " | ".join(cell(v) for v in (
            r["trials"], r["endpoint"], r["clients"], r["ok_per_s"], r["p50_ms"], r["p99_ms"],
            None if r["ok_share"] is None else f"{r['ok_share']:.1%}", r["shed_503"],
            r["other_5xx"], r["unanswered"], r.get("vs_bare"), healthz_cell(health),
            ", ".join(missed) if missed else "all met" if r["targets"] else "")) + " |")
    sizes = sorted({r["trials"] for r in rows if r["bench"] == "api_load"})
    if len(sizes) > 1:
        small, large = sizes[0], sizes[-1]
        by = {(r["trials"], r["endpoint"], r["clients"]): r for r in rows
              if r["bench"] == "api_load"}
        lines += ["", f"| endpoint | clients | 200/s at {small:,} / at {large:,} | p99 at "
                  f"{large:,} / at {small:,} | within 1.3x |", "|---|---|---|---|---|"]
        for (size, endpoint, clients), r in by.items():
            other = by.get((large, endpoint, clients))
            if size != small or other is None:
                continue
            if not (r["ok_per_s"] and other["ok_per_s"]):  # no 200 at one size or both
                lines.append(f"| {endpoint} | {clients} | {r['ok_per_s']} / "
                             f"{other['ok_per_s']} | - | no |")
                continue
            rate = r["ok_per_s"] / other["ok_per_s"]
            p99 = other["p99_ms"] / r["p99_ms"]
            lines.append(f"| {endpoint} | {clients} | {rate:.2f} | {p99:.2f} | "
                         f"{'yes' if max(rate, p99) <= 1.3 else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=50)
    parser.add_argument("--trials", default="100", help="trials per study, comma-separated")
    parser.add_argument("--clients", default="50,200")
    parser.add_argument("--duration", type=int, default=30, help="seconds per hey run")
    parser.add_argument("--timeout", type=int, default=20, help="hey's -t, seconds")
    parser.add_argument("--endpoints", default=",".join(ENDPOINTS))
    parser.add_argument("--study-id", type=int, default=None,
                        help="the study of /studies/{id}/… (default: 25, or the last study)")
    parser.add_argument("--healthz-rps", type=int, default=10,
                        help="/healthz requests per second during each run (0: none)")
    parser.add_argument("--drain", type=float, default=60.0,
                        help="seconds to wait for the server to drain before restarting it")
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--load-core", type=int, default=1)
    parser.add_argument("--fill-with", choices=("optuna", "copy"), default="optuna",
                        help="write the trials through Optuna's storage API (the reference; "
                        "~20 trials/s at best here) or by COPY (minutes for 100,000)")
    parser.add_argument("--fill-procs", type=int, default=3, help="processes, --fill-with "
                        "optuna")
    parser.add_argument("--refill", action="store_true", help="fill the templates again")
    parser.add_argument("--fill-only", action="store_true")
    parser.add_argument("--drop-templates", action="store_true",
                        help="drop the sizes' template databases at the end")
    parser.add_argument("--sql", type=int, default=0, metavar="N",
                        help="first count SQL statements over N requests in a row per endpoint")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.trials = [int(t) for t in args.trials.split(",")]
    args.clients = [int(c) for c in args.clients.split(",") if c]
    args.endpoints = [e for e in args.endpoints.split(",") if e]
    args.study_id = args.study_id or min(25, args.studies)
    unknown = set(args.endpoints) - set(ENDPOINTS)
    if unknown or not 1 <= args.study_id <= args.studies:
        parser.error(f"endpoints from {sorted(ENDPOINTS)}, study id within the studies; got "
                     f"{sorted(unknown)}, {args.study_id=}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    info = commit() | {"machine": machine(), "settings": {
        "duration_s": args.duration, "timeout_s": args.timeout, "study_id": args.study_id,
        "healthz_rps": args.healthz_rps, "server_core": args.server_core,
        "load_core": args.load_core, "versions": {p: version(p) for p in (
            "fastapi", "starlette", "uvicorn", "psycopg", "anyio")}}}

    def leave(*_: Any) -> None:
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, leave)
    rows: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="api_load_") as tmp:
            for trials in args.trials:
                rows += run_size(trials, args, info, Path(tmp))
    finally:
        for proc in list(CHILDREN):
            stop(proc, grace=5)
        if args.drop_templates:
            for trials in args.trials:
                api_fill.drop_database(api_fill.template_name(args.studies, trials,
                                                              args.fill_with))
    if rows:
        print(table(rows))


if __name__ == "__main__":
    main()
