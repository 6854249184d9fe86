"""lrtune.Client's training side against the real app (in process, both databases): how a
trial ends under ``with trial:``, pruning through the client, the torch schedule it builds,
two API replicas deciding pruning alike, and the client importing without torch."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

import lrtune
from lrtune.space import TrialConfig
from lrtune.store import Store
from lrtune_service.app import create_app
from tests.conftest import MakeStore

TOKEN = "client-token"
SPEC = {"task": "external", "epochs": 3, "n_trials": 3, "pruner": {"name": "none"},
        "space": {"families": ["cosine", "step", "plateau"], "lr": {"low": 1e-3, "high": 1e-1}}}


@pytest.fixture
def store(make_store: MakeStore) -> Store:
    return make_store(api_tokens=TOKEN)


def client_of(store: Store) -> Iterator[lrtune.Client]:
    with TestClient(create_app(store.settings, store)) as http:
        client = lrtune.Client("http://testserver", TOKEN)
        http.headers["Authorization"] = f"Bearer {TOKEN}"
        client.http = http  # the real app, in process
        yield client


@pytest.fixture
def client(store: Store) -> Iterator[lrtune.Client]:
    yield from client_of(store)


def states(client: lrtune.Client, study_id: int) -> list[tuple[str, str | None]]:
    return [(t["state"], t["reason"]) for t in client.trials(study_id)["items"]]


def test_with_trial_ends_each_trial_as_the_block_did(client: lrtune.Client) -> None:
    study = client.create({**SPEC, "name": "endings"})
    trials = study.trials(max_trials=3)
    with next(trials) as trial:  # an error in the block: FAIL with its message, re-raised
        pytest.raises(ValueError, lambda: (_ for _ in ()).throw(ValueError("bad batch")))
    with pytest.raises(ZeroDivisionError), next(trials) as trial:
        trial.report(0, 1.0)
        raise ZeroDivisionError("division by zero in my loss")
    with next(trials) as trial:  # NaN: PRUNED diverged, absorbed
        trial.report(0, 0.5)
        trial.report(1, math.nan)
        pytest.fail("report did not raise TrialPruned")
    assert states(client, study.id) == [
        ("FAIL", "the training block ended without complete() or a report"),
        ("FAIL", "failed: ZeroDivisionError: division by zero in my loss"),
        ("PRUNED", "diverged")]


def test_ctrl_c_hands_the_trial_back_and_a_full_study_ends_done(client: lrtune.Client
                                                                ) -> None:
    study = client.create({**SPEC, "name": "interrupted", "n_trials": 2})
    trials = study.trials()
    with pytest.raises(KeyboardInterrupt), next(trials):
        raise KeyboardInterrupt
    trials.close()
    values = []
    for trial in study.trials():
        with trial:
            for epoch in range(trial.epochs):
                trial.report(epoch, 1.0 / (epoch + 1 + trial.number))
            values.append(trial.number)
    assert study.refresh().status == "done"
    assert values == [1, 2]  # the handed-back trial's copy (numbered next), then a new one
    assert states(client, study.id)[0] == ("FAIL", "handed back: interrupted (Ctrl-C)")
    assert study.best()["number"] == 2  # completed with its last reported value


def test_the_trial_schedule_follows_the_catalogue_formula(client: lrtune.Client) -> None:
    study = client.create({**SPEC, "name": "schedule", "n_trials": 3, "epochs": 4})
    spe = 5
    for trial in study.trials():
        with trial:
            model = torch.nn.Linear(2, 1)
            optimizer = trial.optimizer(model.parameters())
            assert isinstance(optimizer, torch.optim.Optimizer)
            assert optimizer.param_groups[0]["lr"] == pytest.approx(trial.lr)
            scheduler = trial.scheduler(optimizer, steps_per_epoch=spe)
            config = TrialConfig.from_dict(trial.config)
            fn = config.schedule.function()
            metrics: list[float] = []
            for epoch in range(trial.epochs):
                for step in range(spe):
                    t = epoch * spe + step
                    expected = fn(t, trial.epochs * spe, spe, trial.lr, metrics)
                    assert scheduler.get_last_lr()[0] == pytest.approx(expected, rel=1e-6)
                    optimizer.step()
                    scheduler.step()
                value = 1.0  # flat: a plateau schedule decays on it
                metrics.append(value)
                trial.report(epoch, value)
            trial.complete()
    assert {t["state"] for t in client.trials(study.id)["items"]} == {"COMPLETE"}


def test_two_replicas_prune_alike(make_store: MakeStore) -> None:
    """Trials finished through one API replica count in the other's pruning."""
    first, second = make_store(api_tokens=TOKEN), make_store(api_tokens=TOKEN)
    replicas = [client_of(first), client_of(second)]
    a, b = (next(r) for r in replicas)
    study = a.create({**SPEC, "name": "replicas", "n_trials": 7, "epochs": 8,
                      "pruner": {"name": "median"}})
    held = []  # a generator dropped is closed, and its trial handed back: keep them
    for n in range(5):
        held.append((b.get(study.id) if n % 2 else study).trials(max_trials=1))
        with next(held[-1]) as trial:
            for epoch in range(8):
                trial.report(epoch, 1.0 - 0.1 * epoch)
    held.append(b.get(study.id).trials(max_trials=1))
    with next(held[-1]) as bad:
        for epoch in range(8):
            bad.report(epoch, 5.0)
        pytest.fail("never pruned")
    assert bad.ended == "PRUNED"
    assert a.trials(study.id)["items"][5]["state"] == "PRUNED"
    for replica in replicas:
        replica.close()


def test_the_client_imports_without_torch(tmp_path: Path) -> None:
    blocked = tmp_path / "no_torch" / "torch"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('no torch here')\n")
    code = ("import lrtune; c = lrtune.Client('http://127.0.0.1:9'); "
            "print(lrtune.TrialPruned.__name__, lrtune.Study.__name__, lrtune.Trial.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": str(blocked.parent)}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["TrialPruned", "Study", "Trial"]


def test_trouble_of_the_api_hands_the_trial_back_not_fails_it(client: lrtune.Client) -> None:
    study = client.create({**SPEC, "name": "api-trouble", "n_trials": 1})
    trials = study.trials()
    with pytest.raises(lrtune.ClientError), next(trials) as trial:
        trial.report(0, 1.0)
        raise lrtune.ClientError(503, "overloaded")
    trials.close()
    assert states(client, study.id)[0][1].startswith("handed back: the lrtune API failed")
