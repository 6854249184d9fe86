from collections.abc import Iterator

import optuna
import pytest
from fastapi.testclient import TestClient
from optuna.trial import TrialState

from lrtune.store import Store
from lrtune_service.app import create_app
from tests.conftest import MakeStore

TOKEN, OTHER = "token-a", "token-b"
A = {"Authorization": f"Bearer {TOKEN}"}
B = {"Authorization": f"Bearer {OTHER}"}
SPEC = {"name": "s1", "task": "linreg", "epochs": 3, "n_trials": 4}


@pytest.fixture
def store(make_store: MakeStore) -> Store:
    return make_store(api_tokens=f"{TOKEN},{OTHER}", max_trials=500, max_epochs=100)


@pytest.fixture
def client(store: Store) -> Iterator[TestClient]:
    with TestClient(create_app(store.settings, store)) as c:
        yield c


def create(client: TestClient, **changes) -> dict:
    r = client.post("/studies", json={**SPEC, **changes}, headers=A)
    assert r.status_code == 201, r.text
    return r.json()


BAD = [
    ({"task": "nope"}, "task"),
    ({"space": {"families": ["sawtooth"]}}, "space.families.0"),
    ({"space": {"optimizers": ["adam", "lion"]}}, "space.optimizers.1"),
    ({"space": {"lr": {"low": 1.0, "high": 0.001}}}, "space.lr"),
    ({"space": {"ranges": {"step.gamma": {"low": 0.9, "high": 0.2}}}},
     "space.ranges.step.gamma"),
    ({"space": {"ranges": {"step.gamma": {"low": 0.1, "high": 3.0}}}},
     "space.ranges.step.gamma"),
    ({"space": {"fixed": {"cosine.eta_min_ratio": -1}}}, "space.fixed.cosine.eta_min_ratio"),
    ({"epochs": "NaN"}, "epochs"),
    ({"space": {"lr": {"low": "NaN", "high": 0.1}}}, "space.lr.low"),
    ({"n_trials": -3}, "n_trials"),
    ({"n_trials": 0}, "n_trials"),
    ({"n_trials": 501}, "n_trials"),
    ({"epochs": 101}, "epochs"),
    ({"pack": 0}, "pack"),
    ({"pruner": {"name": "schedules"}}, "pruner.name"),
    ({"pruner": {"name": "percentile", "eta": 3}}, "pruner.eta"),
    ({"pruner": {"name": "horizon", "rungs": 9}}, "pruner.rungs"),
    ({"pruner": {"name": "horizon"}, "task": "external"}, "pruner.name"),
    ({"objective": "val_acc"}, "objective"),
    ({"name": ""}, "name"),
    ({"surprise": 1}, "surprise"),
    ({"warm_start": {"studies": []}}, "warm_start.studies"),
    ({"warm_start": {"studies": [7, 7]}}, "warm_start.studies"),
    ({"warm_start": {"studies": [7], "top": 5}}, "warm_start.top"),
    ({"warm_start": {"studies": [424242]}}, "warm_start.studies.0"),
]


@pytest.mark.parametrize("changes,field", BAD, ids=[f for _, f in BAD])
def test_bad_input_is_a_4xx_naming_the_field(client: TestClient, changes: dict,
                                             field: str) -> None:
    r = client.post("/studies", json={**SPEC, **changes}, headers=A)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"] == field and field in error["message"]
    assert client.get("/studies").json()["total"] == 0  # nothing half-created


def test_malformed_json_and_oversized_body(client: TestClient) -> None:
    r = client.post("/studies", content=b"{not json", headers={**A, "content-type":
                                                               "application/json"})
    error = r.json()["error"]
    assert r.status_code == 422 and error["field"] == "body"  # not a character offset
    assert "not valid JSON" in error["message"]
    big = {**SPEC, "name": "x", "space": {"fixed": {f"k{i}": i for i in range(20000)}}}
    r = client.post("/studies", json=big, headers=A)
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"


def test_writes_need_a_token_and_ownership(client: TestClient) -> None:
    assert client.post("/studies", json=SPEC).status_code == 401
    r = client.post("/studies", json=SPEC, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["error"]["field"] == "Authorization"
    study = create(client)
    assert client.post(f"/studies/{study['id']}/cancel").status_code == 401
    r = client.post(f"/studies/{study['id']}/cancel", headers=B)
    assert r.status_code == 403 and r.json()["error"]["field"] == "id"
    assert client.delete(f"/studies/{study['id']}", headers=B).status_code == 403
    r = client.post(f"/studies/{study['id']}/cancel", headers=A)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert client.delete(f"/studies/{study['id']}", headers=A).status_code == 204
    assert client.get(f"/studies/{study['id']}").status_code == 404


def test_unknown_ids_are_404(client: TestClient) -> None:
    for path in ("/studies/999", "/studies/999/trials", "/studies/999/best",
                 "/studies/999/best/code", "/studies/999/trials/0"):
        r = client.get(path)
        assert r.status_code == 404, path
        assert r.json()["error"]["code"] == "not_found"
    assert client.post("/studies/999/cancel", headers=A).status_code == 404
    huge = client.get("/studies/99999999999999999999")
    assert huge.status_code == 422 and huge.json()["error"]["field"] == "study_id"
    study = create(client)
    assert client.get(f"/studies/{study['id']}/trials/5").status_code == 404
    no_result = client.get(f"/studies/{study['id']}/best")
    assert no_result.status_code == 409 and no_result.json()["error"]["code"] == "no_result"


def test_duplicate_name_is_409(client: TestClient) -> None:
    create(client)
    r = client.post("/studies", json=SPEC, headers=A)
    assert r.status_code == 409 and r.json()["error"]["field"] == "name"


def test_list_paginates_and_filters(client: TestClient) -> None:
    ids = [create(client, name=f"s{i}")["id"] for i in range(5)]
    client.post(f"/studies/{ids[1]}/cancel", headers=A)
    page = client.get("/studies", params={"limit": 2, "offset": 2}).json()
    assert page["total"] == 5 and [s["id"] for s in page["items"]] == ids[2:4]
    cancelled = client.get("/studies", params={"status": "cancelled"}).json()
    assert [s["id"] for s in cancelled["items"]] == [ids[1]]
    assert client.get("/studies", params={"status": "weird"}).status_code == 422
    assert client.get("/studies", params={"limit": 0}).status_code == 422


def test_trials_best_and_code(client: TestClient, store: Store) -> None:
    study = create(client, space={"families": ["cosine"], "optimizers": ["adam"]})
    for value in (0.5, 0.2, 0.9):
        claim = store.claim()
        assert claim is not None
        claim.trial.suggest_categorical("schedule", ["cosine"])
        claim.trial.suggest_float("lr", 1e-4, 1.0, log=True)
        claim.trial.suggest_categorical("optimizer", ["adam"])
        claim.trial.suggest_float("cosine.eta_min_ratio", 1e-4, 0.1, log=True)
        claim.trial.suggest_float("adam.beta1", 0.8, 0.95)
        claim.trial.suggest_float("adam.beta2", 0.99, 0.9999)
        claim.trial.report(value * 2, 0)
        claim.trial.report(value, 1)
        claim.trial.set_user_attr("lr_curve", [0.1, 0.05])
        store.finish(claim, TrialState.COMPLETE, value)
    got = client.get(f"/studies/{study['id']}").json()
    assert got["progress"]["n_done"] == 3 and got["best"]["value"] == 0.2
    trials = client.get(f"/studies/{study['id']}/trials", params={"limit": 2, "offset": 1})
    assert [t["number"] for t in trials.json()["items"]] == [1, 2]
    assert trials.json()["items"][0]["state"] == "COMPLETE"
    detail = client.get(f"/studies/{study['id']}/trials/1").json()
    assert detail["metric_curve"] == [0.4, 0.2] and detail["lr_curve"] == [0.1, 0.05]
    best = client.get(f"/studies/{study['id']}/best").json()
    assert best["number"] == 1 and best["schedule"]["family"] == "cosine"
    code = client.get(f"/studies/{study['id']}/best/code")
    assert code.headers["content-type"].startswith("text/x-python")
    assert "CosineAnnealingLR" in code.text
    keras = client.get(f"/studies/{study['id']}/best/code", params={"framework": "keras"})
    assert "keras.optimizers.Adam" in keras.text
    assert client.get(f"/studies/{study['id']}/best/code",
                      params={"framework": "jax"}).status_code == 422


def test_catalogue_routes(client: TestClient) -> None:
    families = [f["name"] for f in client.get("/schedules").json()["families"]]
    assert "onecycle" in families and "plateau" in families
    curve = client.get("/schedules/step/curve", params={"epochs": 2, "steps_per_epoch": 2,
                                                         "gamma": 0.5, "lr": 1.0}).json()
    assert curve["lr"] == [1.0, 1.0, 0.5, 0.5] or curve["lr"][0] == 1.0
    r = client.get("/schedules/step/curve", params={"gamma": 7})
    assert r.status_code == 422 and r.json()["error"]["field"] == "step.gamma"
    assert client.get("/schedules/sawtooth/curve").status_code == 422
    assert {t["name"] for t in client.get("/tasks").json()} >= {"linreg", "digits-mlp", "charlm"}


def test_undeclared_methods_are_405_with_allow(client: TestClient) -> None:
    r = client.request("TRACE", "/studies")
    assert r.status_code == 405 and r.headers["allow"] == "GET, POST"
    assert r.json()["error"]["status"] == 405
    assert client.put("/studies/1").headers["allow"] == "DELETE, GET"


def test_health_metrics_docs_and_dashboard(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    create(client)
    metrics = client.get("/metrics").text
    assert 'lrtune_studies{status="running"} 1.0' in metrics
    assert "lrtune_http_requests_total" in metrics
    assert client.get("/docs").status_code == 200
    assert "/studies" in client.get("/openapi.json").json()["paths"]
    page = client.get("/dashboard/")
    assert page.status_code == 200 and "Optuna Dashboard" in page.text
    api = client.get("/api/studies")
    assert api.status_code == 200 and api.json()["study_summaries"][0]["study_name"] == "s1"


def test_closed_reads_cover_the_dashboard(store: Store) -> None:
    settings = store.settings.model_copy(update={"closed_reads": True})
    with TestClient(create_app(settings, store)) as c:
        assert c.get("/studies").status_code == 401
        page = c.get("/dashboard/", follow_redirects=False)  # a browser: to the login form
        assert page.status_code == 303 and page.headers["location"].startswith("/login?next=")
        assert c.get("/api/studies").status_code == 401
        assert c.get("/studies", headers=A).status_code == 200
        assert c.get("/dashboard/", headers=A).status_code == 200
        assert c.get("/healthz").status_code == 200
        login = c.post("/login", data={"token": TOKEN}, follow_redirects=False)
        assert login.status_code == 303 and login.headers["location"] == "/dashboard/"
        cookie = login.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and TOKEN not in cookie
        assert c.get("/api/studies").status_code == 200  # the browser's cookie, no header
        assert c.get("/studies").status_code == 200
        assert c.post("/studies", json=SPEC).status_code == 401  # cookies never write
        c.post("/logout")
        assert c.get("/api/studies").status_code == 401


def test_principal_limits_are_429_naming_the_field(store: Store) -> None:
    settings = store.settings.model_copy(update={"max_running_studies": 2,
                                                 "max_queued_trials": 10})
    with TestClient(create_app(settings, store)) as c:
        for i in range(2):
            assert c.post("/studies", json={**SPEC, "name": f"q{i}"}, headers=A
                          ).status_code == 201
        r = c.post("/studies", json={**SPEC, "name": "q2"}, headers=A)
        assert r.status_code == 429 and r.json()["error"]["field"] == "name"
        assert c.post("/studies", json={**SPEC, "name": "other"}, headers=B).status_code == 201
        r = c.post("/studies", json={**SPEC, "name": "big", "n_trials": 7}, headers=B)
        assert r.status_code == 429 and r.json()["error"]["field"] == "n_trials"
        first = c.get("/studies", params={"limit": 1}).json()["items"][0]["id"]
        c.post(f"/studies/{first}/cancel", headers=A)  # a slot frees up
        assert c.post("/studies", json={**SPEC, "name": "q3"}, headers=A).status_code == 201


def test_a_trial_written_behind_lrtunes_back_breaks_no_read(client: TestClient,
                                                           store: Store) -> None:
    """A finished trial whose parameters do not decode (written with plain Optuna) is shown
    as it is; the list, the study and its best answer 200."""
    study = create(client)
    optuna_study = store.optuna_study(store.get_study(study["id"]))
    optuna_study.add_trial(optuna.trial.create_trial(
        params={"x": 0.5}, distributions={"x": optuna.distributions.FloatDistribution(0, 1)},
        value=0.1, user_attrs={"horizon": {"rung": "top"}}))  # not a rung lrtune wrote
    assert client.get("/studies").status_code == 200
    best = client.get(f"/studies/{study['id']}/best").json()
    assert best["params"] == {"x": 0.5} and best["schedule"] is None
    trials = client.get(f"/studies/{study['id']}/trials")
    assert trials.status_code == 200 and trials.json()["items"][0]["horizon"] is None
    assert client.get(f"/studies/{study['id']}/trials/0").json()["horizon"] is None


def test_errors_a_person_can_act_on(client: TestClient) -> None:
    """Without pydantic's internals: no union member, regex or character offset."""
    no_type = client.post("/studies", content=b'{"name": "x"}', headers={**A,
                          "content-type": "text/plain"})
    assert no_type.status_code == 422 and "JSON object" in no_type.json()["error"]["message"]
    bad_name = client.post("/studies", json={**SPEC, "name": "a b"}, headers=A).json()
    assert bad_name["error"]["field"] == "name" and "^" not in bad_name["error"]["message"]
    bad_lr = client.post("/studies", json={**SPEC, "space": {"lr": {"low": 1, "high": 0.1}}},
                         headers=A).json()["error"]
    assert bad_lr["field"] == "space.lr" and "function-after" not in bad_lr["message"]


def test_a_study_where_nothing_completed_fails_saying_what_to_change(
        client: TestClient, store: Store) -> None:
    study = create(client, n_trials=2)
    for _ in range(2):
        claim = store.claim()
        assert claim is not None
        claim.trial.report(float("nan"), 0)
        claim.trial.set_user_attr("reason", "diverged")
        store.finish(claim, TrialState.PRUNED, None)
    shown = client.get(f"/studies/{study['id']}").json()
    assert shown["status"] == "failed" and "space.lr" in shown["reason"]
    best = client.get(f"/studies/{study['id']}/best")
    assert best.status_code == 409 and "no trial completed" in best.json()["error"]["message"]


def test_dashboard_odd_requests_are_4xx_not_500(client: TestClient) -> None:
    import uuid

    missing = client.get(f"/artifacts/999/999/{uuid.uuid4()}")
    assert missing.status_code == 404
    bundle = client.get("/static/bundle.js", headers={"Accept-Encoding": "identity"})
    assert bundle.status_code == 200 and bundle.headers.get("content-encoding") is None
    bare = client.build_request("GET", "/static/bundle.js")
    del bare.headers["Accept-Encoding"]  # a probe or proxy that sends none
    plain = client.send(bare)
    assert plain.status_code == 200 and plain.content == bundle.content
