"""lrtune behind a real PgBouncer in transaction mode: an API with two workers and a lease
client finish a study through it, with no server-side prepared statement and no session state
carried between transactions, and PostgreSQL sees only PgBouncer's few server connections."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.conftest import (
    CONVERGING_LR,
    PG_ADMIN,
    _pg_database,
    free_port,
    lrtune_env,
    spawn,
    stop,
    wait_ready,
)

SERVER_POOL = 4  # PgBouncer's server connections to the test's database
OWNER, WORKER = "pgb-owner-token", "pgb-worker-token"


def pgbouncer_binary() -> str:
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/sbin")
    if found is None:
        message = "pgbouncer is not installed (apt-get install -y pgbouncer; .ci/run does)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture
def bouncer(tmp_path: Path) -> Iterator[tuple[str, str, int]]:
    """A fresh database and a PgBouncer (transaction mode) in front of it: (the lrtune URL
    through PgBouncer, the database's name, PgBouncer's port)."""
    binary = pgbouncer_binary()
    database = _pg_database()
    direct = next(database)
    name = direct.rsplit("/", 1)[1]
    port = free_port()
    # pgbouncer refuses to run as root: it runs as postgres, which must read its files
    home = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
    home.chmod(0o755)
    (home / "userlist.txt").write_text('"postgres" ""\n')
    (home / "pgbouncer.ini").write_text(f"""\
[databases]
{name} = host=127.0.0.1 port=5432 dbname={name}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {home / "userlist.txt"}
admin_users = postgres
pool_mode = transaction
default_pool_size = {SERVER_POOL}
max_client_conn = 400
server_reset_query =
""")
    for path in home.iterdir():
        path.chmod(0o644)
    log = (tmp_path / "pgbouncer.log").open("ab")
    cmd = [binary, *(["-u", "postgres"] if os.geteuid() == 0 else []),
           str(home / "pgbouncer.ini")]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited with {proc.returncode}: "
                                   f"{(tmp_path / 'pgbouncer.log').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/{name}", name, port
    finally:
        stop(proc)
        log.close()
        shutil.rmtree(home, ignore_errors=True)
        database.close()  # drops the database


def lease_client(url: str, study_id: int, epochs: int) -> list[int]:
    """A worker-token lease client: claim one trial at a time, heartbeat, report each epoch,
    finish; the first trial it takes is handed back instead (re-queued). The numbers it
    finished."""
    finished: list[int] = []
    released = False
    auth = {"Authorization": f"Bearer {WORKER}"}
    with httpx.Client(base_url=url, headers=auth, timeout=60) as http:
        deadline = time.monotonic() + 120
        while len(finished) < 3 and time.monotonic() < deadline:
            r = http.post("/v1/leases", json={"study_id": study_id, "count": 1})
            if r.status_code == 204:
                time.sleep(0.05)
                continue
            if r.status_code == 409:  # the study ended: the workers took the rest
                break
            assert r.status_code == 201, r.text
            lease = r.json()
            number = lease["trials"][0]["number"]
            base = f"/v1/leases/{lease['lease']}"
            if not released:
                assert http.post(f"{base}/release", json={"reason": "test"}).json() == {
                    "handed_back": [number]}
                released = True
                continue
            assert http.post(f"{base}/heartbeat").json()["running"] == [number]
            value = 1.0
            for epoch in range(epochs):
                value *= 0.9
                r = http.post(f"{base}/report", json={"epoch": epoch, "trials": [
                    {"number": number, "value": value, "lr": 1e-3}]})
                assert r.status_code == 200, r.text
                if number in r.json()["pruned"]:
                    break
            else:
                r = http.post(f"{base}/finish", json={"trials": [
                    {"number": number, "state": "COMPLETE", "value": value}]})
                assert r.status_code == 200 and r.json()["ended"] == [number], r.text
                finished.append(number)
    return finished


def test_a_study_ends_exactly_through_pgbouncer(bouncer: tuple[str, str, int],
                                                tmp_path: Path) -> None:
    url, name, pgb_port = bouncer
    env = lrtune_env(url, LRTUNE_API_TOKENS=OWNER, LRTUNE_WORKER_TOKENS=WORKER,
                     LRTUNE_DB_POOL_SIZE="8", LRTUNE_DB_MAX_OVERFLOW="8",
                     # the workers pause between idle claims: the lease client gets some trials
                     LRTUNE_IDLE_MIN="1", LRTUNE_IDLE_MAX="1")
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    server = spawn(["serve", "--port", str(port), "--workers", "2"], env,
                   tmp_path / "server.log")
    peak = 0
    try:
        wait_ready(api, server)
        r = httpx.post(f"{api}/studies", headers={"Authorization": f"Bearer {OWNER}"},
                       timeout=30, json={"name": "through-pgbouncer", "task": "linreg",
                                         "epochs": 2, "n_trials": 8,
                                         "space": {"lr": CONVERGING_LR}})
        assert r.status_code == 201, r.text
        sid = int(r.json()["id"])
        by_client = lease_client(api, sid, epochs=2)
        assert by_client, "the lease client got no trial"
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            deadline = time.monotonic() + 180
            while (study := httpx.get(f"{api}/studies/{sid}", timeout=30).json())[
                    "status"] == "running":
                assert time.monotonic() < deadline, study
                peak = max(peak, admin.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                    (name,)).fetchone()[0])  # type: ignore[index]
                time.sleep(0.1)
        assert study["status"] == "done", study
        assert study["progress"]["n_done"] == 8
        trials = httpx.get(f"{api}/studies/{sid}/trials", params={"limit": 100},
                           timeout=30).json()["items"]
        numbers = [t["number"] for t in trials]
        assert len(numbers) == len(set(numbers))
        assert len([t for t in trials if t["state"] in ("COMPLETE", "PRUNED")]) == 8
        assert not [t for t in trials if t["state"] in ("RUNNING", "WAITING")]
        states = {t["number"]: t["state"] for t in trials}
        assert all(states[n] == "COMPLETE" for n in by_client)
    finally:
        stop(server)
        for log in sorted(tmp_path.glob("*.log")):
            print(f"--- {log.name}\n{log.read_text()[-3000:]}")
    # every transaction went through PgBouncer, on its few server connections
    assert 0 < peak <= SERVER_POOL
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:{pgb_port}/pgbouncer",
                         autocommit=True, cursor_factory=psycopg.ClientCursor) as console:
        cur = console.cursor()
        cur.execute("SHOW STATS")
        columns = [c.name for c in cur.description or []]
        stats = {row[columns.index("database")]: dict(zip(columns, row, strict=True))
                 for row in cur.fetchall()}
    assert int(stats[name]["total_xact_count"]) > 100
