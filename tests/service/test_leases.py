"""The trial-lease protocol over the API, on SQLite and PostgreSQL: claims within the budget,
reports and server-side pruning, endings, hand-backs, and what a lease refuses."""

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from lrtune import study as names
from lrtune.errors import SpecError
from lrtune.store import Store
from lrtune.store.leases import EpochReport
from lrtune_service.app import create_app
from tests.conftest import MakeStore, age_trials

OWNER, OTHER, WORKER = "token-owner", "token-other", "token-worker"
A = {"Authorization": f"Bearer {OWNER}"}
B = {"Authorization": f"Bearer {OTHER}"}
W = {"Authorization": f"Bearer {WORKER}"}
EXTERNAL = {"name": "ext", "task": "external", "epochs": 4, "n_trials": 3,
            "objective": "val_acc", "direction": "maximize",
            "space": {"families": ["cosine", "step"], "optimizers": ["adamw"]},
            "pruner": {"name": "none"}}


@pytest.fixture
def store(make_store: MakeStore) -> Store:
    return make_store(api_tokens=f"{OWNER},{OTHER}", worker_tokens=WORKER)


@pytest.fixture
def client(store: Store) -> Iterator[TestClient]:
    with TestClient(create_app(store.settings, store)) as c:
        yield c


def create(client: TestClient, **changes: object) -> dict:
    r = client.post("/studies", json={**EXTERNAL, **changes}, headers=A)
    assert r.status_code == 201, r.text
    return r.json()


def claim(client: TestClient, study_id: int | None, count: int | str = 1, headers: dict = A
          ) -> dict | None:
    r = client.post("/v1/leases", json={"study_id": study_id, "count": count}, headers=headers)
    if r.status_code == 204:
        return None
    assert r.status_code == 201, r.text
    return r.json()


def test_an_external_study_trained_through_leases_ends_with_its_exact_budget(
        client: TestClient, store: Store) -> None:
    study = create(client)
    first = claim(client, study["id"], count=2)
    assert first is not None and [t["number"] for t in first["trials"]] == [0, 1]
    trial = first["trials"][0]
    assert trial["config"]["schedule"]["family"] in ("cosine", "step")
    assert trial["config"]["optimizer"]["name"] == "adamw"
    assert trial["seed"] == names.derived_seed(0, 0)
    assert first["study"]["direction"] == "maximize" and first["study"]["epochs"] == 4
    last = claim(client, study["id"], count=5)
    assert last is not None and [t["number"] for t in last["trials"]] == [2]  # the budget
    assert claim(client, study["id"]) is None  # 204: all taken, none finished yet

    for lease in (first, last):
        url = f"/v1/leases/{lease['lease']}"
        numbers = [t["number"] for t in lease["trials"]]
        assert client.post(f"{url}/heartbeat", headers=A).json() == {"running": numbers}
        for epoch in range(4):
            r = client.post(f"{url}/report", headers=A, json={
                "epoch": epoch, "steps_per_epoch": 7,
                "trials": [{"number": n, "value": 0.5 + 0.1 * epoch + 0.01 * n,
                            "lr": 0.1 / (epoch + 1), "metrics": {"val_acc": 0.5}}
                           for n in numbers]})
            assert r.status_code == 200, r.text
            assert r.json() == {"pruned": []}
        r = client.post(f"{url}/finish", headers=A, json={"trials": [
            {"number": n, "state": "COMPLETE", "value": 0.8 + 0.01 * n} for n in numbers]})
        assert r.status_code == 200 and r.json() == {"ended": numbers}

    shown = client.get(f"/studies/{study['id']}").json()
    assert shown["status"] == "done" and shown["progress"]["complete"] == 3
    best = client.get(f"/studies/{study['id']}/best").json()
    assert best["number"] == 2 and best["value"] == pytest.approx(0.82)  # maximized
    detail = client.get(f"/studies/{study['id']}/trials/2").json()
    assert detail["lr_curve"] == pytest.approx([0.1, 0.05, 0.1 / 3, 0.025])
    assert detail["metric_curve"] == pytest.approx([0.52, 0.62, 0.72, 0.82])
    code = client.get(f"/studies/{study['id']}/best/code")
    assert code.status_code == 200 and "STEPS_PER_EPOCH = 7" in code.text
    r = client.post("/v1/leases", json={"study_id": study["id"]}, headers=A)
    assert r.status_code == 409 and r.json()["error"]["code"] == "study_ended"


def test_the_server_prunes_with_the_studys_history(client: TestClient) -> None:
    study = create(client, n_trials=8, objective="val_loss", direction="minimize",
                   pruner={"name": "median"}, epochs=8)
    for n in range(5):  # five finished trials with a good curve: the median's start-up
        lease = claim(client, study["id"])
        assert lease is not None
        url = f"/v1/leases/{lease['lease']}"
        for epoch in range(8):
            client.post(f"{url}/report", headers=A, json={
                "epoch": epoch, "trials": [{"number": n, "value": 1.0 - 0.1 * epoch}]})
        client.post(f"{url}/finish", headers=A,
                    json={"trials": [{"number": n, "state": "COMPLETE", "value": 0.3}]})
    lease = claim(client, study["id"])
    assert lease is not None
    url = f"/v1/leases/{lease['lease']}"
    answers = [client.post(f"{url}/report", headers=A, json={
        "epoch": epoch, "trials": [{"number": 5, "value": 5.0}]}).json()
        for epoch in range(3)]
    assert answers[0] == {"pruned": []}  # the median's warm-up: epochs // 4 steps
    assert {"pruned": [5]} in answers  # far worse than every finished trial
    trial = client.get(f"/studies/{study['id']}/trials/5").json()
    assert trial["state"] == "PRUNED" and trial["reason"] == "pruned"
    r = client.post(f"{url}/report", headers=A, json={
        "epoch": 4, "trials": [{"number": 5, "value": 5.0}]})
    assert r.status_code == 409  # it has ended: nothing more is taken


def test_a_reaped_lease_is_409_and_changes_nothing(client: TestClient, store: Store) -> None:
    study = create(client)
    lease = claim(client, study["id"])
    assert lease is not None
    url = f"/v1/leases/{lease['lease']}"
    assert client.post(f"{url}/report", headers=A, json={
        "epoch": 0, "trials": [{"number": 0, "value": 0.5}]}).status_code == 200
    age_trials(store)
    assert store.reap(store.get_study(study["id"])) == 1  # claims reap so, now and then
    again = claim(client, study["id"])  # its copy comes first
    assert again is not None and again["trials"][0]["params"] == lease["trials"][0]["params"]
    for path, body in (("report", {"epoch": 1, "trials": [{"number": 0, "value": 0.4}]}),
                       ("finish", {"trials": [{"number": 0, "state": "COMPLETE",
                                               "value": 0.4}]}),
                       ("heartbeat", None)):
        r = client.post(f"{url}/{path}", headers=A, json=body)
        assert r.status_code == 409, (path, r.text)
    trial = client.get(f"/studies/{study['id']}/trials/0").json()
    assert trial["state"] == "FAIL" and trial["reason"].startswith("lost")
    assert trial["metric_curve"] == [0.5]  # the refused report wrote nothing


def test_who_may_claim_and_use_a_lease(client: TestClient) -> None:
    study = create(client)
    own = create(client, name="own-task", task="linreg", epochs=2, n_trials=2,
                 objective="val_loss", direction=None, space={"lr": {"low": 1e-3,
                                                                     "high": 1e-2}})
    r = client.post("/v1/leases", json={"study_id": study["id"]}, headers=B)
    assert r.status_code == 403  # another principal's study
    r = client.post("/v1/leases", json={"study_id": study["id"]}, headers=W)
    assert r.status_code == 403 and "external" in r.json()["error"]["message"]
    assert client.post("/v1/leases", json={}, headers=B).status_code == 204  # owns nothing
    r = client.post("/v1/leases", json={"study_id": study["id"]})
    assert r.status_code == 401
    worker = claim(client, None, headers=W)  # a worker token: lrtune's own tasks only
    assert worker is not None and worker["study"]["id"] == own["id"]
    mine = claim(client, study["id"])
    assert mine is not None
    url = f"/v1/leases/{mine['lease']}"
    r = client.post(f"{url}/report", headers=B, json={
        "epoch": 0, "trials": [{"number": 0, "value": 1.0}]})
    assert r.status_code == 403
    r = client.post(f"{url}/report", headers=B, json={
        "epoch": 0, "trials": [{"number": 0, "value": 1.0}],
        "finish": [{"number": 0, "state": "FAIL"}]})
    assert r.status_code == 403  # another token ends nothing either
    assert client.get(f"/studies/{study['id']}/trials/0", headers=A).json()["state"] == \
        "RUNNING"
    r = client.post(f"{url}/report", headers=A, json={
        "epoch": 0, "trials": [{"number": 99, "value": 1.0}]})
    assert r.status_code == 409 and r.json()["error"]["field"] == "trials[0].number"
    r = client.post(f"{url}/report", headers=A, json={
        "epoch": 9, "trials": [{"number": 0, "value": 1.0}]})
    assert r.status_code == 422 and r.json()["error"]["field"] == "epoch"
    for verb, path in (("post", "/studies"), ("post", f"/studies/{study['id']}/cancel"),
                       ("delete", f"/studies/{own['id']}")):
        r = client.request(verb.upper(), path, json=EXTERNAL, headers=W)
        assert r.status_code == 403, (path, r.text)  # a worker token does nothing else
    r = client.post("/login", json={"token": WORKER})
    assert r.status_code == 403


def test_release_hands_trials_back_and_another_version_is_told_so(
        client: TestClient) -> None:
    study = create(client, n_trials=2)
    lease = claim(client, study["id"], count=2)
    assert lease is not None
    r = client.post(f"/v1/leases/{lease['lease']}/release", headers=A,
                    json={"reason": "ctrl-c"})
    assert r.json() == {"handed_back": [0, 1]}
    again = claim(client, study["id"], count=2)
    assert again is not None and [t["number"] for t in again["trials"]] == [2, 3]
    trials = client.get(f"/studies/{study['id']}/trials").json()["items"]
    assert [(t["state"], t["reason"], t["retry_of"]) for t in trials] == [
        ("FAIL", "handed back: ctrl-c", None)] * 2 + [("RUNNING", None, 0), ("RUNNING", None, 1)]
    r = client.post("/v2/leases", json={}, headers=A)
    assert r.status_code == 404 and r.json()["error"]["code"] == "protocol_version"
    assert "v1" in r.json()["error"]["message"]


def test_external_spec_errors_name_the_field(client: TestClient) -> None:
    for changes, field in (({"space": {"lr": "auto"}}, "space.lr"),
                           ({"pack": 4}, "pack"),
                           ({"task": "linreg", "steps_per_epoch": 5, "objective": "val_loss",
                             "direction": None}, "steps_per_epoch"),
                           ({"task": "linreg", "objective": "val_loss"}, "direction")):
        r = client.post("/studies", json={**EXTERNAL, **changes}, headers=A)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["field"] == field


def test_racing_requests_end_a_trial_once(client: TestClient, store: Store) -> None:
    """Two finishes at once, or a report and a finish: one wins whole, the other is 409 and
    writes nothing (no 500, no attribute of the loser on the winner's trial)."""
    import threading
    from collections.abc import Callable
    from functools import partial

    from lrtune.errors import Conflict
    from lrtune.store.leases import EpochReport, TrialEnd

    rounds = 4
    study = create(client, n_trials=rounds, epochs=3)
    caller = store.principal(OWNER)
    assert caller is not None
    for n in range(rounds):
        lease = claim(client, study["id"])
        assert lease is not None
        lease_id = lease["lease"]
        complete = [TrialEnd(n, "COMPLETE", 0.5, None, {"acc": 1.0})]
        calls: list[Callable[[], object]] = [
            partial(store.leases.finish, caller, lease_id, complete),
            partial(store.leases.finish, caller, lease_id,
                    [TrialEnd(n, "FAIL", None, "LOSER", {"acc": 2.0})]) if n % 2 else
            partial(store.leases.report, caller, lease_id, 0, [[EpochReport(n, 0.7, 0.1)]])]
        outcomes: list[str] = []

        def run(call: Callable[[], object], outcomes: list[str] = outcomes) -> None:
            try:
                call()
                outcomes.append("ok")
            except Conflict:
                outcomes.append("409")

        threads = [threading.Thread(target=run, args=(c,)) for c in calls]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        trial = client.get(f"/studies/{study['id']}/trials/{n}").json()
        if n % 2:
            assert sorted(outcomes) == ["409", "ok"], outcomes
            assert (trial["state"], trial["reason"], trial["metrics"]) in (
                ("COMPLETE", None, {"acc": 1.0}), ("FAIL", "LOSER", {"acc": 2.0}))
        else:  # the report before the finish, or refused after it
            assert outcomes.count("ok") >= 1 and trial["state"] == "COMPLETE"
            assert trial["metric_curve"] in ([], [0.7])


def test_epochs_are_reported_once_in_order(client: TestClient) -> None:
    study = create(client)
    lease = claim(client, study["id"])
    assert lease is not None
    url = f"/v1/leases/{lease['lease']}/report"
    ahead = client.post(url, headers=A, json={"epoch": 2, "trials": [{"number": 0,
                                                                       "value": 1.0}]})
    assert ahead.status_code == 409 and "epoch 0 next" in ahead.json()["error"]["message"]
    for epoch, lr in ((0, 0.1), (1, None), (2, 0.3)):
        r = client.post(url, headers=A, json={"epoch": epoch, "trials": [
            {"number": 0, "value": 1.0, "lr": lr}]})
        assert r.status_code == 200, r.text
    again = client.post(url, headers=A, json={"epoch": 1, "trials": [{"number": 0,
                                                                       "value": 1.0}]})
    assert again.status_code == 409
    detail = client.get(f"/studies/{study['id']}/trials/0").json()
    assert detail["lr_curve"] == [0.1, 0.1, 0.3] and detail["metric_curve"] == [1.0] * 3
    long = client.post("/v" + "9" * 5000 + "/leases", json={}, headers=A)
    assert long.status_code == 404


def test_several_epochs_in_one_report(client: TestClient, store: Store) -> None:
    """``later`` carries the epochs after ``epoch``: each trial's in order from the next it
    owes, a trial may stop early; refusals name the item, and change nothing."""
    study = create(client, n_trials=2, pruner={"name": "percentile"})
    lease = claim(client, study["id"], count=2)
    assert lease is not None
    url = f"/v1/leases/{lease['lease']}/report"

    def item(number: int, epoch: int, lr: float | None = 0.1) -> dict:
        return {"number": number, "value": 1.0 + epoch + number, "lr": lr,
                "metrics": {"val_acc": 0.1 * epoch}}

    out_of_order = client.post(url, headers=A, json={
        "epoch": 0, "trials": [item(0, 0)], "later": [[item(1, 1)]]})
    assert out_of_order.status_code == 409
    assert out_of_order.json()["error"]["field"] == "later[0][0].number"
    past_the_end = client.post(url, headers=A, json={
        "epoch": 2, "trials": [item(0, 2)], "later": [[item(0, 3)], [item(0, 4)]]})
    assert past_the_end.status_code == 422
    assert past_the_end.json()["error"]["field"] == "later[1]"
    too_big = client.post(url, headers=A, json={
        "epoch": 0, "trials": [item(0, 0)], "later": [[item(0, 1)]] * 16_384})
    assert too_big.status_code == 413  # the body limit first; and whatever it is set to:
    with pytest.raises(SpecError, match="at most 16384 values") as refused:
        store.leases.report(store.principal(OWNER), lease["lease"], 0,
                            [[EpochReport(0, 1.0)]] * 16_385)
    assert refused.value.field == "later"
    stranger = client.post(url, headers=A, json={
        "epoch": 0, "trials": [item(0, 0)], "later": [[item(0, 1), item(7, 1)]]})
    assert stranger.status_code == 409  # trial 7 is not in this lease
    assert stranger.json()["error"]["field"] == "later[0][1].number"
    twice = client.post(url, headers=A, json={
        "epoch": 0, "trials": [item(0, 0)], "later": [[item(0, 1), item(0, 1)]]})
    assert twice.status_code == 422 and twice.json()["error"]["field"] == "later[0]"

    r = client.post(url, headers=A, json={
        "epoch": 0, "steps_per_epoch": 5, "trials": [item(0, 0, 0.3), item(1, 0)],
        "later": [[item(0, 1, None), item(1, 1, 0.2)], [item(0, 2, 0.1)]]})
    assert r.status_code == 200, r.text
    assert r.json() == {"pruned": []}  # no trial finished yet: the pruner keeps them all
    zero = client.get(f"/studies/{study['id']}/trials/0").json()
    assert zero["metric_curve"] == [1.0, 2.0, 3.0]
    assert zero["lr_curve"] == [0.3, 0.3, 0.1]  # an epoch without an LR repeats the last
    one = client.get(f"/studies/{study['id']}/trials/1").json()
    assert one["metric_curve"] == [2.0, 3.0] and one["lr_curve"] == [0.1, 0.2]
    r = client.post(url, headers=A, json={"epoch": 2, "trials": [item(1, 2)],
                                          "later": [[item(0, 3), item(1, 3)]]})
    assert r.status_code == 200, r.text
    one = client.get(f"/studies/{study['id']}/trials/1").json()
    assert one["metric_curve"] == [2.0, 3.0, 4.0, 5.0]
    assert one["lr_curve"] == [0.1, 0.2, 0.1, 0.1]
    again = client.post(url, headers=A, json={"epoch": 3, "trials": [item(0, 3)]})
    assert again.status_code == 409


def test_a_ladder_run_below_the_top_never_ends_complete(client: TestClient) -> None:
    """The lease says each run's rung; a client that finishes a short run COMPLETE (not
    lrtune's worker, which knows better) gets it ended PRUNED with its rung, so only
    full-horizon runs can be the study's best."""
    study = create(client, name="ladder", task="linreg", objective="val_loss",
                   direction=None, pruner={"name": "horizon"})
    lease = claim(client, study["id"])
    assert lease is not None
    trial = lease["trials"][0]
    assert trial["horizon"] == {"rung": 0, "rungs": 3, "fraction": 1 / 9,
                                "promoted_from": None}
    url = f"/v1/leases/{lease['lease']}"
    assert client.post(f"{url}/report", headers=A, json={
        "epoch": 0, "trials": [{"number": trial["number"], "value": 0.7}]}).status_code == 200
    r = client.post(f"{url}/finish", headers=A, json={"trials": [
        {"number": trial["number"], "state": "COMPLETE", "value": 0.5}]})
    assert r.status_code == 200, r.text
    ended = client.get(f"/studies/{study['id']}/trials/{trial['number']}").json()
    assert ended["state"] == "PRUNED" and ended["reason"].startswith("rung 0 of 3")
    assert ended["value"] == 0.7 and ended["horizon"]["rung"] == 0
    assert client.get(f"/studies/{study['id']}/best").status_code == 409  # none COMPLETE
    lease = claim(client, study["id"])  # the same, its ending riding on its report
    assert lease is not None and lease["trials"][0]["horizon"]["rung"] == 0
    number = lease["trials"][0]["number"]
    r = client.post(f"/v1/leases/{lease['lease']}/report", headers=A, json={
        "epoch": 0, "trials": [{"number": number, "value": 0.6}],
        "finish": [{"number": number, "state": "COMPLETE", "value": 0.6}]})
    assert r.json() == {"pruned": [], "ended": [number]}
    ended = client.get(f"/studies/{study['id']}/trials/{number}").json()
    assert ended["state"] == "PRUNED" and ended["reason"].startswith("rung 0 of 3")


def test_a_report_may_carry_its_trials_endings(client: TestClient, store: Store) -> None:
    """``finish`` in a report ends trials as ``/finish`` does, in the same request: after the
    epochs written, the answer names them in ``ended``; a refused report ends nothing, and
    its refusals name the item."""
    study = create(client, n_trials=3, epochs=2)
    lease = claim(client, study["id"], count=3)
    assert lease is not None
    url = f"/v1/leases/{lease['lease']}/report"
    one = {"number": 0, "value": 0.9, "lr": 0.1}
    refusals = [
        ({"finish": [{"number": 7, "state": "COMPLETE", "value": 1.0}]}, 409,
         "finish[0].number"),  # not in this lease
        ({"finish": [{"number": 1, "state": "COMPLETE"}]}, 422, "finish[0].value"),
        ({"finish": [{"number": 1, "state": "FAIL"}] * 2}, 422, "finish"),
        ({"finish": [{"number": 1, "state": "DONE"}]}, 422, "finish.0.state"),
        ({"epoch": 5, "finish": [{"number": 1, "state": "FAIL"}]}, 422, "epoch"),
        ({"finish": [{"number": 1, "state": "FAIL"}] * 1025}, 422, "finish"),
    ]
    for change, status, field in refusals:
        r = client.post(url, headers=A, json={"epoch": 0, "trials": [one], **change})
        assert r.status_code == status, (change, r.text)
        assert r.json()["error"]["field"] == field
    before = client.get(f"/studies/{study['id']}/trials").json()["items"]
    assert {t["state"] for t in before} == {"RUNNING"}  # nothing written by a refusal
    assert client.get(f"/studies/{study['id']}/trials/0").json()["metric_curve"] == []
    r = client.post(url, headers=A, json={
        "epoch": 0, "trials": [one, {"number": 1, "value": 0.8}], "steps_per_epoch": 5,
        "later": [[{"number": 0, "value": 0.5, "lr": 0.05}]],
        "finish": [{"number": 0, "state": "COMPLETE", "value": 0.5, "metrics": {"val_acc": 0.9}},
                   {"number": 2, "state": "FAIL", "reason": "out of data"}]})
    assert r.status_code == 200, r.text
    assert r.json() == {"pruned": [], "ended": [0, 2]}
    trials = {t["number"]: t
              for t in client.get(f"/studies/{study['id']}/trials").json()["items"]}
    assert [trials[n]["state"] for n in range(3)] == ["COMPLETE", "RUNNING", "FAIL"]
    zero = client.get(f"/studies/{study['id']}/trials/0").json()
    assert zero["value"] == 0.5 and zero["metric_curve"] == [0.9, 0.5]
    assert zero["lr_curve"] == [0.1, 0.05] and zero["metrics"] == {"val_acc": 0.9}
    assert client.get(f"/studies/{study['id']}/trials/2").json()["reason"] == "out of data"
    attrs = {t.number: t.user_attrs for t in store.all_trials(store.get_study(study["id"]))}
    assert attrs[0]["steps_per_epoch"] == 5 and "steps_per_epoch" not in attrs[2]  # not sent
    ended = client.post(url, headers=A, json={"epoch": 1, "trials": [
        {"number": 1, "value": 0.7}], "finish": [{"number": 0, "state": "COMPLETE",
                                                  "value": 0.5}]})
    assert ended.status_code == 409 and ended.json()["error"]["field"] == "finish[0].number"
    assert client.get(f"/studies/{study['id']}/trials/1").json()["metric_curve"] == [0.8]
    r = client.post(url, headers=A, json={"epoch": 1, "trials": [{"number": 1, "value": 0.7}],
                                          "finish": [{"number": 1, "state": "COMPLETE",
                                                      "value": 0.7}]})
    assert r.json() == {"pruned": [], "ended": [1]}
    one = client.get(f"/studies/{study['id']}/trials/1").json()
    assert one["state"] == "COMPLETE" and one["metric_curve"] == [0.8, 0.7]


def test_a_claim_may_ask_for_the_studys_own_pack(client: TestClient, store: Store) -> None:
    """``"count": "pack"``: the study's ``pack`` where its spec gives a number (a worker that
    does not know the study yet gets a whole pack at once), one trial for ``auto``."""
    own = {"task": "linreg", "epochs": 2, "objective": "val_loss", "direction": None,
           "space": {"lr": {"low": 1e-3, "high": 1e-2}}}
    packed = create(client, name="packed", n_trials=5, pack=3, **own)
    lease = claim(client, packed["id"], count="pack")
    assert lease is not None and len(lease["trials"]) == 3
    lease = claim(client, packed["id"], count="pack")
    assert lease is not None and len(lease["trials"]) == 2  # the budget's rest
    auto = create(client, name="auto", n_trials=5, pack="auto", **own)
    lease = claim(client, auto["id"], count="pack")
    assert lease is not None and len(lease["trials"]) == 1
    r = client.post("/v1/leases", json={"study_id": auto["id"], "count": "all"}, headers=A)
    assert r.status_code == 422 and r.json()["error"]["field"] == "count"
    big = create(client, name="big", n_trials=5, pack=4, **own)
    lease = store.leases.claim(store.principal(OWNER), big["id"], None, most=3)
    assert lease is not None and len(lease.trials) == 3  # never past the server's max_pack
