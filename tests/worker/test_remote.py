"""lrtune's worker over HTTP (``lrtune worker --url``), in this process against the real app
on both databases: the worker's own settings name a database that does not exist, so every
trial it trains went through the lease protocol. Packs report each epoch in one request; the
server's pruner stops trials; task errors, divergence and out-of-memory end trials as over the
database; a trial reaped under the worker is dropped and re-run; stopping hands back; an API
out of reach is waited out."""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from optuna.trial import TrialState

import lrtune
from lrtune import optuna_internals as internals
from lrtune.settings import Settings
from lrtune.spec import StudySpec
from lrtune.store import Store
from lrtune_service.app import create_app
from lrtune_worker import remote
from lrtune_worker.loop import Worker
from lrtune_worker.remote import LeaseSource
from lrtune_worker.tasks import get_task
from tests.conftest import CONVERGING_LR, MakeStore
from tests.faults.common import PLUGINS, assert_exact_budget

WORKER = "worker-token"
NO_DATABASE = "postgresql+psycopg://nobody@127.0.0.1:1/none"
# one optimizer: a pack is one fused sub-pack (each optimizer kind trains as one)
TINY = {"task": "linreg", "epochs": 3, "space": {"families": ["cosine", "step", "onecycle"],
                                                 "optimizers": ["adam"], "lr": CONVERGING_LR}}
assert PLUGINS  # the fault tasks' entry points, on sys.path
# a claim of a pack asks for a long read timeout, which Starlette's TestClient ignores
pytestmark = pytest.mark.filterwarnings("ignore:You should not use the 'timeout' argument")


@pytest.fixture
def store(make_store: MakeStore) -> Store:
    return make_store(worker_tokens=WORKER, heartbeat_interval=1, heartbeat_grace=4)


class Served:
    """The app in process; ``requests``: (method, path) of each request the worker sent."""

    def __init__(self, http: TestClient) -> None:
        self.http = http
        self.requests: list[tuple[str, str]] = []
        self.leased: list[int] = []  # the trials of each lease, in order

        def leased(response: httpx.Response) -> None:
            if response.request.url.path == "/v1/leases" and response.status_code == 201:
                response.read()
                self.leased.append(len(response.json()["trials"]))

        http.event_hooks = {"request": [lambda r: self.requests.append((r.method, r.url.path))],
                            "response": [leased]}

    def source(self, body_limit: int = 64 * 1024) -> LeaseSource:
        client = lrtune.Client("http://testserver", WORKER)
        client.http = self.http
        return LeaseSource(client, body_limit)

    def per_lease(self, action: str) -> Counter[int]:
        return Counter(int(m.group(1)) for _, path in self.requests
                       if (m := re.fullmatch(rf"/v1/leases/(\d+)/{action}", path)))


@contextlib.contextmanager
def serving(app: Any) -> Iterator[Served]:
    """``app`` in process, called with the worker token."""
    with TestClient(app) as http:
        http.headers["Authorization"] = f"Bearer {WORKER}"
        yield Served(http)


@pytest.fixture
def served(store: Store) -> Iterator[Served]:
    with serving(create_app(store.settings, store)) as served:
        yield served


def worker(source: LeaseSource, **kwargs: object) -> Worker:
    """A worker whose settings name no reachable database: it can only go over HTTP."""
    settings = Settings(database_url=NO_DATABASE, idle_min=0.01, idle_max=0.05)  # type: ignore[arg-type]
    return Worker(settings, device="cpu", exit_when_idle=True, source=source,
                  **kwargs)  # type: ignore[arg-type]


def test_a_pack_over_http_reports_each_epoch_in_one_request(
        store: Store, served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remote, "REPORT_EVERY", 0.0)  # no epoch waits for the next
    record = store.create_study(StudySpec(name="packed", n_trials=10, pack=4,
                                          pruner={"name": "none"}, **TINY), "me")
    bodies = report_bodies(served)
    w = worker(served.source())
    assert w.run() == 10 and w.store is None  # never opened a database
    assert store.get_study(record.id).status == "done"
    assert_exact_budget(store, record)
    trials = store.all_trials(record)
    assert {t.state for t in trials} == {TrialState.COMPLETE}
    spe = get_task("linreg").steps_per_epoch(get_task("linreg").info.batch_size)
    for t in trials:
        assert len(t.intermediate_values) == 3 and len(t.user_attrs["lr_curve"]) == 3
        assert t.user_attrs["config"]["schedule"]["family"] == t.params["schedule"]
        assert t.user_attrs["steps_per_epoch"] == spe
        assert set(t.user_attrs["metrics"]) >= {"val_loss", "train_loss"}
    # the study's pack from its first lease on (its spec gives it): as over the database
    assert served.leased == [4, 4, 2]
    reports, finishes = served.per_lease("report"), served.per_lease("finish")
    assert len(reports) == 3 and set(reports.values()) == {3}  # one request per epoch
    assert not finishes  # every trial of a pack ends riding on its last epoch's report
    last = [b for b in bodies if b["epoch"] == 2]
    assert [len(b["finish"]) for b in last] == [4, 4, 2]
    assert all({e["number"] for e in b["finish"]} == {t["number"] for t in b["trials"]}
               and {e["state"] for e in b["finish"]} == {"COMPLETE"} for b in last)
    assert not any("finish" in b for b in bodies if b["epoch"] < 2)


def report_bodies(served: Served) -> list[dict]:
    bodies: list[dict] = []
    served.http.event_hooks["request"].append(
        lambda r: bodies.append(json.loads(r.read())) if r.url.path.endswith("/report")
        else None)
    return bodies


def test_epochs_no_pruner_waits_on_go_together(store: Store, served: Served,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a pruner, a lease's epochs are sent together (here: all of them, at the end);
    the database holds the same as when each went alone. With one, each goes at once."""
    monkeypatch.setattr(remote, "REPORT_EVERY", 3600.0)
    record = store.create_study(StudySpec(name="together", n_trials=6, pack=4,
                                          pruner={"name": "none"}, **TINY), "me")
    bodies = report_bodies(served)
    assert worker(served.source()).run() == 6
    assert_exact_budget(store, record)
    assert served.leased == [4, 2]
    assert set(served.per_lease("report").values()) == {1}  # one report for three epochs
    assert [b["epoch"] for b in bodies] == [0, 0] and all(len(b["later"]) == 2
                                                             for b in bodies)
    spe = get_task("linreg").steps_per_epoch(get_task("linreg").info.batch_size)
    for t in store.all_trials(record):
        assert t.state == TrialState.COMPLETE and sorted(t.intermediate_values) == [0, 1, 2]
        assert len(t.user_attrs["lr_curve"]) == 3 and t.user_attrs["steps_per_epoch"] == spe
        assert set(t.user_attrs["metrics"]) >= {"val_loss", "train_loss"}

    pruned = store.create_study(StudySpec(name="judged", n_trials=3, pack=1,
                                          pruner={"name": "percentile"}, **TINY), "me")
    bodies.clear()
    assert worker(served.source(), studies={pruned.id}).run() == 3
    assert len(bodies) == 9 and not any("later" in b for b in bodies)


def older_api(app: Any, field: str, sent: str = "", path: str = "/report") -> Any:
    """``app`` as an API of before the ``field`` (with ``sent`` as its JSON value, when
    given) of requests to ``path`` answers: a 422 naming it."""
    marker = f'"{field}":{sent}' if sent else f'"{field}"'

    async def older(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].endswith(path):
            body, more = b"", True
            while more:
                message = await receive()
                body, more = body + message.get("body", b""), message.get("more_body", False)
            if marker.encode() in body:
                refusal = JSONResponse({"error": {"code": "invalid", "field": field, "message":
                                                  f"{field}: extra inputs are not permitted"}},
                                       422)
                await refusal(scope, receive, send)
                return
            replay = iter([{"type": "http.request", "body": body, "more_body": False}])

            async def again() -> dict:
                return next(replay, {"type": "http.disconnect"})
            await app(scope, again, send)
            return
        await app(scope, receive, send)
    return older


def test_an_api_without_later_gets_one_epoch_a_request(store: Store,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """An API of before ``later`` refuses it (422 naming it): the worker sends those epochs
    one by one, and no more ``later`` to it."""
    monkeypatch.setattr(remote, "REPORT_EVERY", 3600.0)
    record = store.create_study(StudySpec(name="older", n_trials=5, pack=4,
                                          pruner={"name": "none"}, **TINY), "me")
    with serving(older_api(create_app(store.settings, store), "later")) as served:
        bodies = report_bodies(served)
        assert worker(served.source()).run() == 5
    assert_exact_budget(store, record)
    assert all(sorted(t.intermediate_values) == [0, 1, 2] for t in store.all_trials(record))
    assert "later" in bodies[0] and not any("later" in b for b in bodies[1:])
    assert len(bodies) == 1 + 3 + 3  # the refused one, its three epochs, the next lease's
    assert "finish" in bodies[3]  # the endings ride on the last epoch's report


def test_an_api_without_finish_in_reports_gets_finish_requests(store: Store) -> None:
    """An API of before a report's ``finish`` refuses it (422 naming it): the worker sends
    that report without it and the endings as a finish, and no more ``finish`` in reports;
    nothing is lost or run twice."""
    record = store.create_study(StudySpec(name="older", n_trials=9, pack=4,
                                          pruner={"name": "percentile"}, **TINY), "me")
    with serving(older_api(create_app(store.settings, store), "finish")) as served:
        bodies = report_bodies(served)
        assert worker(served.source()).run() == 9
        finishes = served.per_lease("finish")
    assert_exact_budget(store, record)
    assert {t.state for t in store.all_trials(record)} <= {TrialState.COMPLETE,
                                                            TrialState.PRUNED}
    assert all(len(t.intermediate_values) == 3 for t in store.all_trials(record)
               if t.state == TrialState.COMPLETE)
    with_finish = [i for i, b in enumerate(bodies) if "finish" in b]
    assert len(with_finish) == 1 and with_finish[0] == 2  # the first lease's last epoch
    assert bodies[3] == {k: v for k, v in bodies[2].items() if k != "finish"}  # sent again
    assert len(finishes) == len(served.leased)  # one finish request a lease, from then on


def test_an_api_without_a_studys_pack_count_gets_a_first_lease_of_one(store: Store) -> None:
    """An API of before ``"count": "pack"`` refuses it (422 naming ``count``): the worker
    claims one trial, learns the study's pack from it, and asks no more for ``"pack"``."""
    record = store.create_study(StudySpec(name="older", n_trials=10, pack=4,
                                          pruner={"name": "none"}, **TINY), "me")
    claims: list[dict] = []
    with serving(older_api(create_app(store.settings, store), "count", '"pack"',
                           "/leases")) as served:
        served.http.event_hooks["request"].append(
            lambda r: claims.append(json.loads(r.read())) if r.url.path == "/v1/leases"
            else None)
        assert worker(served.source()).run() == 10
    assert_exact_budget(store, record)
    assert served.leased == [1, 4, 4, 1]
    assert [c["count"] for c in claims[:3]] == ["pack", 1, 4]
    assert "pack" not in [c["count"] for c in claims[1:]]


def test_a_report_too_big_for_one_body_is_split(store: Store, served: Served) -> None:
    """A pack's epoch is split into bodies under the API's limit (64 KiB by default: a
    thousand trials' report passes it), each under the limit, none lost."""
    record = store.create_study(StudySpec(name="split", n_trials=24, pack=24,
                                          pruner={"name": "none"}, **TINY), "me")
    sizes: list[int] = []
    served.http.event_hooks["request"].append(
        lambda r: sizes.append(len(r.read())) if r.url.path.endswith("/report") else None)
    assert worker(served.source(body_limit=2048), studies={record.id}).run() == 24
    assert_exact_budget(store, record)
    assert all(len(t.intermediate_values) == 3 for t in store.all_trials(record))
    assert served.leased == [24]
    assert max(sizes) <= 2048 and served.per_lease("report").most_common(1)[0][1] > 3


def test_the_servers_pruner_stops_trials_and_they_are_not_finished_twice(
        store: Store, served: Served, caplog: pytest.LogCaptureFixture) -> None:
    record = store.create_study(StudySpec(
        name="pruned", task="linreg", epochs=6, n_trials=16, pack=4,
        pruner={"name": "successive_halving"},
        space={"families": ["cosine", "step"], "lr": {"low": 1e-4, "high": 1e-2}}), "me")
    assert worker(served.source()).run() == 16
    assert_exact_budget(store, record)
    trials = store.all_trials(record)
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned and all(t.user_attrs["reason"] == "pruned" for t in pruned)
    assert all(len(t.intermediate_values) < 6 for t in pruned)
    assert "lost under this worker" not in caplog.text and "refused" not in caplog.text


def test_task_errors_divergence_and_out_of_memory_end_trials_not_the_worker(
        make_store: MakeStore, store: Store, served: Served) -> None:
    specs = {name: store.create_study(StudySpec(name=name, task=name, epochs=2, n_trials=2,
                                                pack=pack, pruner={"name": "none"}), "me")
             for name, pack in (("fault-raise", 1), ("fault-nan", 2), ("fault-oom", 1))}
    after = store.create_study(StudySpec(name="after", n_trials=2, **TINY), "me")
    w = worker(served.source())
    w.run()
    raised = store.all_trials(specs["fault-raise"])
    assert raised and all(t.state == TrialState.FAIL for t in raised)
    assert all("failed: ValueError: task exploded on purpose" in t.user_attrs["reason"]
               for t in raised)
    oom = store.all_trials(specs["fault-oom"])
    assert oom and all(t.user_attrs["reason"].startswith("out of memory") for t in oom)
    nan = store.all_trials(specs["fault-nan"])
    assert [t.state for t in nan] == [TrialState.PRUNED] * 2
    assert all(t.user_attrs["reason"] == "diverged" for t in nan)
    assert_exact_budget(store, after)


def test_a_trial_reaped_under_the_worker_is_dropped_and_rerun(
        make_store: MakeStore, store: Store, served: Served,
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remote, "REPORT_EVERY", 0.0)  # each epoch seen as it ends
    record = store.create_study(StudySpec(name="reaped", n_trials=2, task="linreg",
                                          epochs=40, pruner={"name": "none"},
                                          space={"lr": CONVERGING_LR}), "me")
    reaper = make_store()
    w = worker(served.source())
    runner = threading.Thread(target=w.run)
    runner.start()
    deadline = time.monotonic() + 60
    while not (running := [t for t in store.all_trials(record)
                           if t.state == TrialState.RUNNING and t.intermediate_values]):
        assert time.monotonic() < deadline  # training, its lease made
        time.sleep(0.01)
    assert reaper.fail_and_requeue(internals.trial_id(running[0]), "lost: test", True)
    runner.join(timeout=120)
    assert not runner.is_alive() and store.get_study(record.id).status == "done"
    assert_exact_budget(store, record)
    assert f"trials [{running[0].number}] lost under this worker" in caplog.text


def test_a_stopping_worker_hands_its_lease_back(store: Store, served: Served,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remote, "REPORT_EVERY", 0.0)  # each epoch seen as it ends
    record = store.create_study(StudySpec(name="stopped", n_trials=3, pack=3, task="linreg",
                                          epochs=200, pruner={"name": "none"},
                                          space={"lr": CONVERGING_LR}), "me")
    w = worker(served.source())
    runner = threading.Thread(target=w.run)
    runner.start()
    deadline = time.monotonic() + 60
    while not any(t.intermediate_values for t in store.all_trials(record)):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    w.stop()
    runner.join(timeout=60)
    assert not runner.is_alive()
    trials = store.all_trials(record)
    handed = [t for t in trials if t.state == TrialState.FAIL]
    assert handed and all(re.fullmatch(r"handed back: worker \S+ stopping",
                                       t.user_attrs["reason"]) for t in handed)
    assert sorted(t.params["lr"] for t in trials if t.state == TrialState.WAITING) == \
        sorted(t.params["lr"] for t in handed)
    assert served.per_lease("release")


def test_an_api_out_of_reach_is_waited_out(caplog: pytest.LogCaptureFixture) -> None:
    client = lrtune.Client("http://127.0.0.1:1", WORKER, connect_wait=0)
    w = worker(LeaseSource(client, body_limit=64 * 1024))
    assert w.run() == 0
    assert "the lrtune API at http://127.0.0.1:1 unavailable" in caplog.text


def test_the_cli_worker_goes_over_http_only_when_told(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from lrtune.cli import app

    made: list[object] = []

    class Recorded(Worker):
        def run(self) -> int:
            made.append(self.source)
            return 0

        def install_signals(self) -> None:
            pass

    monkeypatch.setattr("lrtune_worker.loop.Worker", Recorded)
    for key in ("LRTUNE_URL", "LRTUNE_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    runner = CliRunner()
    assert runner.invoke(app, ["worker", "--device", "cpu"]).exit_code == 0
    assert made.pop() is None  # the database, as before
    missing = runner.invoke(app, ["worker", "--url", "http://127.0.0.1:9"])
    assert missing.exit_code == 2 and "LRTUNE_TOKEN" in missing.output
    monkeypatch.setenv("LRTUNE_TOKEN", WORKER)
    assert runner.invoke(app, ["worker", "--url", "http://127.0.0.1:9"]).exit_code == 0
    assert isinstance(made.pop(), LeaseSource)
    monkeypatch.setenv("LRTUNE_URL", "http://127.0.0.1:9")
    assert runner.invoke(app, ["worker"]).exit_code == 0
    source = made.pop()
    assert isinstance(source, LeaseSource) and source.client.url == "http://127.0.0.1:9"
