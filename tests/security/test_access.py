"""Who may change what, against a real ``lrtune serve`` on loopback, on SQLite and PostgreSQL,
with open and closed reads: anonymous, another principal and the owner.

"No change" is checked, not assumed: a digest of every table (lrtune's and Optuna's) and of
the artifact folder is taken before and after each batch of refused writes.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import optuna
import optuna_dashboard
import pytest
import sqlalchemy as sa
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.trial import TrialState

from lrtune.dashboard import curve_artifact_id
from lrtune.settings import Settings
from lrtune.space import SearchSpace
from lrtune.store import Store, sqlalchemy_url
from lrtune_service.dashboard import ROUTES
from tests.conftest import _pg_database, free_port, lrtune_env, spawn, stop, wait_ready

pytestmark = pytest.mark.timeout(300)
ENV_TOKEN = "env-token-for-the-security-tests"


@dataclass
class Served:
    url: str
    db_url: str
    closed: bool
    alice: str
    bob: str
    study: int  # alice's study (lrtune id)
    optuna_study: int
    finished_trial: int  # trial ids
    running_trial: int
    artifact: str  # an HTML file uploaded beside the running trial
    artifact_dir: Path
    proc: subprocess.Popen


@contextmanager
def database(kind: str, tmp: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp / 'lrtune.db'}"
    else:
        with contextmanager(_pg_database)() as url:
            yield url


def cli(env: dict[str, str], *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "lrtune", *args], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def seed_trials(db_url: str, study_id: int, artifacts: Path) -> tuple[int, int, int, str]:
    """A finished and a running trial in the study, and an HTML artifact on the running one,
    written as a worker and a user's script with database access would."""
    store = Store(Settings(database_url=db_url))
    record = store.get_study(study_id)
    done = store.claim({study_id})
    assert done is not None
    SearchSpace(record.spec.space).sample(done.trial)
    done.trial.report(0.5, 0)
    assert store.finish(done, TrialState.COMPLETE, 0.5)
    running = store.claim({study_id})
    assert running is not None
    page = artifacts / "page.html"
    page.write_text("<script>document.title = 'owned'</script>")
    artifact = upload_artifact(artifact_store=FileSystemArtifactStore(str(artifacts)),
                               file_path=str(page), study_or_trial=running.trial,
                               mimetype="text/html")
    store.db.engine.dispose()
    store.optuna_storage.engine.dispose()
    return store.optuna_study_id(record), done.trial_id, running.trial_id, artifact


@pytest.fixture(scope="module", params=[("sqlite", False), ("sqlite", True),
                                        ("postgresql", False), ("postgresql", True)],
                ids=["sqlite-open", "sqlite-closed", "postgresql-open", "postgresql-closed"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Served]:
    kind, closed = request.param
    tmp = tmp_path_factory.mktemp(f"access-{kind}-{closed}")
    artifacts = tmp / "artifacts"
    artifacts.mkdir()
    with database(kind, tmp) as db_url:
        env = lrtune_env(db_url, LRTUNE_CLOSED_READS=str(closed).lower(),
                         LRTUNE_ARTIFACT_DIR=str(artifacts), LRTUNE_API_TOKENS=ENV_TOKEN)
        cli(env, "migrate")
        alice = cli(env, "token", "create", "--name", "alice")
        bob = cli(env, "token", "create", "--name", "bob")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = spawn(["serve", "--port", str(port)], env, tmp / "server.log")
        try:
            wait_ready(url, proc)
            created = httpx.post(f"{url}/studies", headers=bearer(alice), timeout=30, json={
                "name": "victim", "task": "linreg", "epochs": 2, "n_trials": 4})
            assert created.status_code == 201, created.text
            study = created.json()["id"]
            optuna_study, finished, running, artifact = seed_trials(db_url, study, artifacts)
            yield Served(url, db_url, closed, alice, bob, study, optuna_study, finished,
                         running, artifact, artifacts, proc)
            assert proc.poll() is None, (tmp / "server.log").read_text()[-3000:]
        finally:
            stop(proc)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def digest(served: Served) -> str:
    """Every row of every table (but logins) and every artifact file, hashed."""
    engine = sa.create_engine(sqlalchemy_url(served.db_url))
    h = hashlib.sha256()
    with engine.connect() as conn:
        for table in sorted(sa.inspect(conn).get_table_names()):
            if table == "lrtune_sessions":
                continue
            rows = sorted(repr(tuple(row)) for row in conn.execute(
                sa.text(f'SELECT * FROM "{table}"')))
            h.update(f"{table}:{rows}".encode())
    engine.dispose()
    for path in sorted(served.artifact_dir.rglob("*")):
        h.update(str(path).encode() + (path.read_bytes() if path.is_file() else b""))
    return h.hexdigest()


def logged_in(served: Served, token: str) -> httpx.Client:
    """A browser's session: the login cookie and no Authorization header."""
    client = httpx.Client(base_url=served.url, timeout=30)
    r = client.post("/login", data={"token": token})
    assert r.status_code == 303 and "lrtune_session" in client.cookies, r.text
    return client


def concrete(served: Served, rule: str) -> str:
    """A request path for a bottle rule, with the ids of the served study."""
    artifact = served.artifact
    values = {"study_id": str(served.optuna_study), "trial_id": str(served.running_trial),
              "history_id": "history", "artifact_id": artifact, "plot_type": "contour",
              "filename": "bundle.js"}
    path = rule.replace("<:re:(/.*)?>", "/")
    for name, value in values.items():
        for suffix in (":int>", ":path>", ":re:[0-9a-fA-F-]+>", ">"):
            path = path.replace(f"<{name}{suffix}", value)
    assert "<" not in path, path
    return path


# Bodies a dashboard user would send (and an attacker's variants).
BODIES = {"/tell": {"state": "Complete", "values": [-1e308]},
          "/user-attrs": {"user_attrs": {"reason": "overwritten", "lr_curve": []}},
          "/rename": {"study_name": "renamed"}, "/note": {"version": 0, "body": "defaced"},
          "/api/studies": {"study_name": "created", "directions": ["minimize"]}}


def test_every_dashboard_route_is_decided() -> None:
    """A route added by a future optuna-dashboard fails here until it is decided."""
    app = optuna_dashboard.wsgi(optuna.storages.InMemoryStorage())
    routes = {(route.method, route.rule) for route in app.routes}
    assert routes == set(ROUTES), (routes ^ set(ROUTES))


def test_dashboard_writes_are_refused_for_everyone(served: Served) -> None:
    before = digest(served)
    callers = {"anonymous": httpx.Client(base_url=served.url, timeout=30),
               "another principal": httpx.Client(base_url=served.url, timeout=30,
                                                 headers=bearer(served.bob)),
               "the owner": httpx.Client(base_url=served.url, timeout=30,
                                         headers=bearer(served.alice)),
               "the owner's browser": logged_in(served, served.alice)}
    writes = [(method, rule) for (method, rule), why in ROUTES.items() if why is not None]
    assert len(writes) >= 20
    for who, client in callers.items():
        for method, rule in writes:
            path = concrete(served, rule)
            body = next((b for end, b in BODIES.items() if path.endswith(end)), {})
            r = client.request(method, path, json=body)
            assert r.status_code == 403, (who, method, path, r.status_code, r.text)
            assert r.json()["error"]["code"] == "read_only", r.text
        client.close()
    assert digest(served) == before
    assert httpx.get(f"{served.url}/healthz", timeout=30).status_code == 200


def test_rest_writes_check_the_owner(served: Served) -> None:
    before = digest(served)
    for method in ("POST", "DELETE"):
        path = f"/studies/{served.study}" + ("/cancel" if method == "POST" else "")
        anonymous = httpx.request(method, served.url + path, timeout=30)
        assert anonymous.status_code == 401
        other = httpx.request(method, served.url + path, headers=bearer(served.bob),
                              timeout=30)
        assert other.status_code == 403 and other.json()["error"]["field"] == "id"
        browser = logged_in(served, served.alice)  # a cookie never writes
        assert browser.request(method, path).status_code == 401
        browser.close()
    assert digest(served) == before


def test_reads_follow_the_setting(served: Served) -> None:
    anonymous = httpx.Client(base_url=served.url, timeout=30)
    reads = ["/studies", f"/studies/{served.study}", "/api/studies",
             f"/api/studies/{served.optuna_study}", f"/csv/{served.optuna_study}", "/metrics"]
    for path in reads:
        expected = 401 if served.closed else 200
        assert anonymous.get(path).status_code == expected, path
    page = anonymous.get("/dashboard/", follow_redirects=False)
    if served.closed:
        assert page.status_code == 303 and page.headers["location"].startswith("/login")
    else:
        assert page.status_code == 200
    for probe, status in (("/healthz", "ok"), ("/readyz", "ready")):  # open, and say no more
        r = anonymous.get(probe)
        assert r.status_code == 200 and r.json() == {"status": status}
    browser = logged_in(served, served.bob)  # any principal reads every study
    for path in reads:
        assert browser.get(path).status_code == 200, path
    browser.close()
    anonymous.close()


def test_artifacts_are_never_active_content(served: Served) -> None:
    headers = bearer(served.bob)
    page = httpx.get(f"{served.url}/artifacts/{served.optuna_study}/{served.running_trial}/"
                     f"{served.artifact}", headers=headers, timeout=30)
    assert page.status_code == 200 and b"<script>" in page.content
    assert page.headers["content-type"] == "application/octet-stream"
    assert page.headers["content-disposition"] == "attachment"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in page.headers["content-security-policy"]
    curve = curve_artifact_id(served.optuna_study, served.finished_trial)
    png = httpx.get(f"{served.url}/artifacts/{served.optuna_study}/{served.finished_trial}/"
                    f"{curve}", headers=headers, timeout=60)
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    assert png.headers["content-type"] == "image/png"
    assert png.headers["x-content-type-options"] == "nosniff"


def test_owner_ids_are_opaque(served: Served) -> None:
    study = httpx.get(f"{served.url}/studies/{served.study}", headers=bearer(served.bob),
                      timeout=30).json()
    assert study["owner"].startswith("p_")
    for token in (served.alice, served.bob, ENV_TOKEN):
        assert hashlib.sha256(token.encode()).hexdigest()[:16] != study["owner"]


POISON = [
    ({"sampler": {"name": "random", "seed": -1}}, "sampler.seed"),
    ({"sampler": {"name": "random", "seed": 2**32}}, "sampler.seed"),
    ({"seed": 10**30}, "seed"),
    ({"space": {"lr": {"low": 1e-320, "high": 1e308}}}, "space.lr.low"),
    ({"space": {"lr": {"low": 1e-3, "high": 1e308}}}, "space.lr.high"),
    ({"space": {"batch_size": []}}, "space.batch_size"),
    ({"space": {"batch_size": [2**40]}}, "space.batch_size.0"),
    ({"space": {"ranges": {f"cosine.x{i}": {"low": 0, "high": 1} for i in range(65)}}},
     "space.ranges"),
    ({"space": {"fixed": {"random.seed": 2**40}}}, "space.fixed.random.seed"),
    ({"space": {"fixed": {"onecycle.final_div_factor": 1e300}}},
     "space.fixed.onecycle.final_div_factor"),
    ({"space": {"clip": {"max_lr": 1e300}}}, "space.clip.max_lr"),
    ({"pack": 10**9}, "pack"),
]


def test_poison_specs_are_refused(served: Served) -> None:
    """Numbers that would stop every worker claiming from the study (seeds past 2**32, LRs
    that overflow, lists and maps without end) are refused, naming the field."""
    before = digest(served)
    for changes, field in POISON:
        spec = {"name": f"poison-{uuid.uuid4().hex[:8]}", "task": "linreg", **changes}
        r = httpx.post(f"{served.url}/studies", json=spec, headers=bearer(served.alice),
                       timeout=30)
        assert r.status_code == 422, (changes, r.text)
        assert r.json()["error"]["field"] == field, r.json()
    assert digest(served) == before


def test_a_revoked_token_and_its_logins_stop_at_once(served: Served) -> None:
    env = lrtune_env(served.db_url, LRTUNE_API_TOKENS=ENV_TOKEN)
    carol = cli(env, "token", "create", "--name", "carol")
    browser = logged_in(served, carol)
    assert browser.get("/api/studies").status_code == 200
    listed = json.loads(cli(env, "token", "list", "--json"))
    carols = [t["id"] for t in listed if t["principal"] == "carol"]
    cli(env, "token", "revoke", str(carols[0]))
    r = httpx.post(f"{served.url}/studies", headers=bearer(carol), timeout=30,
                   json={"name": "by-carol", "task": "linreg"})
    assert r.status_code == 401
    if served.closed:
        assert browser.get("/api/studies").status_code == 401
    browser.close()
    # a token from LRTUNE_API_TOKENS is listed once it has been used, and not revocable here
    assert httpx.post(f"{served.url}/studies/999999/cancel", headers=bearer(ENV_TOKEN),
                      timeout=30).status_code == 404  # authenticated, then not found
    listed = json.loads(cli(env, "token", "list", "--json"))
    env_rows = [t for t in listed if t["source"] == "env"]
    assert len(env_rows) == 1
    refused = subprocess.run([sys.executable, "-m", "lrtune", "token", "revoke",
                              str(env_rows[0]["id"])], env=env, capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode == 1 and "LRTUNE_API_TOKENS" in refused.stderr


def test_the_running_trial_is_untouched(served: Served) -> None:
    """After every probe above, the trial a worker holds is still RUNNING, unvalued."""
    store = Store(Settings(database_url=served.db_url), migrate=False)
    trial = store.optuna_storage.get_trial(served.running_trial)
    assert trial.state == TrialState.RUNNING and trial.value is None
    assert "reason" not in trial.user_attrs
    finished = store.optuna_storage.get_trial(served.finished_trial)
    assert finished.value == 0.5


@pytest.mark.parametrize("closed", [False, True], ids=["open", "closed"])
def test_the_standalone_dashboard_is_gated_alike(db_url: str, tmp_path: Path,
                                                 closed: bool) -> None:
    """``lrtune dashboard`` (compose's port 8080): read-only, closed reads by login."""
    env = lrtune_env(db_url, LRTUNE_CLOSED_READS=str(closed).lower())
    cli(env, "migrate")
    token = cli(env, "token", "create", "--name", "alice")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = spawn(["dashboard", "--port", str(port)], env, tmp_path / "dashboard.log")
    try:
        wait_ready(url, proc)
        anonymous = httpx.Client(base_url=url, timeout=30)
        assert anonymous.post("/api/studies", json=BODIES["/api/studies"]).status_code == 403
        assert anonymous.get("/api/studies").status_code == (401 if closed else 200)
        page = anonymous.get("/dashboard/", follow_redirects=False)
        assert page.status_code == (303 if closed else 200)
        browser = httpx.Client(base_url=url, timeout=30)
        assert browser.post("/login", data={"token": token}).status_code == 303
        assert browser.get("/api/studies").status_code == 200
        assert browser.post("/api/studies", json=BODIES["/api/studies"]).status_code == 403
        anonymous.close()
        browser.close()
        assert proc.poll() is None
    finally:
        stop(proc)


def test_a_worker_token_claims_and_reports_and_does_nothing_else(served: Served) -> None:
    store = Store(Settings(database_url=served.db_url))
    worker = store.create_token("fleet", "worker")
    store.db.engine.dispose()
    store.optuna_storage.engine.dispose()
    external = httpx.post(f"{served.url}/studies", headers=bearer(served.alice), timeout=30,
                          json={"name": f"ext-{uuid.uuid4().hex[:8]}", "task": "external",
                                "epochs": 2, "n_trials": 2})
    assert external.status_code == 201, external.text
    before = digest(served)
    client = httpx.Client(base_url=served.url, headers=bearer(worker), timeout=30)
    spec = {"name": "by-a-worker", "task": "linreg", "epochs": 2, "n_trials": 2}
    for method, path, body in (("POST", "/studies", spec),
                               ("POST", f"/studies/{served.study}/cancel", None),
                               ("DELETE", f"/studies/{served.study}", None),
                               ("POST", "/api/studies", BODIES["/api/studies"]),
                               ("POST", "/v1/leases", {"study_id": external.json()["id"]})):
        r = client.request(method, path, json=body)
        assert r.status_code == 403, (path, r.text)
    assert httpx.post(f"{served.url}/login", data={"token": worker},
                      timeout=30).status_code == 403
    for path in ("/studies", f"/studies/{served.study}", "/api/studies"):
        assert client.get(path).status_code == (403 if served.closed and path[1] == "s"
                                                else 401 if served.closed else 200), path
    assert digest(served) == before
    mine = httpx.post(f"{served.url}/v1/leases", headers=bearer(served.alice), timeout=30,
                      json={"study_id": external.json()["id"]})
    assert mine.status_code == 201, mine.text
    lease = mine.json()["lease"]
    for token in (worker, served.bob):  # another token's lease: refused, whoever holds it
        r = httpx.post(f"{served.url}/v1/leases/{lease}/finish", headers=bearer(token),
                       timeout=30, json={"trials": [{"number": 0, "state": "COMPLETE",
                                                     "value": 1.0}]})
        assert r.status_code == 403 and r.json()["error"]["field"] == "lease_id"
    assert httpx.post(f"{served.url}/v1/leases/{lease}/heartbeat",
                      timeout=30).status_code == 401
    httpx.post(f"{served.url}/v1/leases/{lease}/release", headers=bearer(served.alice),
               timeout=30)
    client.close()
