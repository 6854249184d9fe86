"""Helpers of the integration tests: an optional tool that must be there under CI, leased
trials without a server (to compare a framework's per-batch LRs with a plain loop's), and the
finished trials of a study as the API shows them."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import optuna
import pytest
import torch

from lrtune import study as names
from lrtune.leasing import Trial
from lrtune.space import SearchSpace
from lrtune.spec import StudySpec
from tests.test_e2e import assert_exact
from tests.test_own_code import Api


def need(module: str) -> None:
    """Import ``module`` (an optional extra that the dev extra installs): missing, the test
    fails under CI=true and skips elsewhere."""
    try:
        __import__(module)
    except ImportError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{module} is required (the dev extra installs it): {e}")
        pytest.skip(f"{module} is not installed: {e}")


class FakeLeases:
    """The lease routes in memory: records each call; a report from epoch ``prune_at`` on
    answers "pruned"."""

    def __init__(self, prune_at: int | None = None) -> None:
        self.prune_at = prune_at
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        action = path.rsplit("/", 1)[-1]
        body = kwargs.get("json") or {}
        self.calls.append((action, body))
        pruned = []
        if action == "report" and self.prune_at is not None and body["epoch"] >= self.prune_at:
            pruned = [item["number"] for item in body["trials"]]
        return httpx.Response(200, json={"pruned": pruned, "running": []})

    def reports(self) -> list[dict[str, Any]]:
        return [body for action, body in self.calls if action == "report"]

    def endings(self) -> list[dict[str, Any]]:
        return [item for action, body in self.calls if action == "finish"
                for item in body["trials"]]


def sampled_config(families: list[str], seed: int = 0) -> dict[str, Any]:
    """A trial config as the server samples it (schedule, optimizer, LR)."""
    spec = StudySpec(name="fake", task="external", epochs=3, n_trials=1,
                     space={"families": families, "optimizers": ["momentum"],
                            "lr": {"low": 0.01, "high": 0.1}})
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed)).ask()
    config: dict[str, Any] = SearchSpace(spec.space, names.direction(spec)).sample(
        trial).to_dict()
    return config


def fake_trial(config: dict[str, Any], epochs: int, prune_at: int | None = None,
               objective: str = "val_loss") -> Trial:
    lease = {"lease": 1, "heartbeat_interval": 60,
             "study": {"id": 1, "name": "fake", "epochs": epochs, "objective": objective,
                       "steps_per_epoch": None},
             "trials": [{"number": 0, "params": {"lr": config["optimizer"]["lr"]},
                         "config": config, "seed": 0}]}
    return Trial(FakeLeases(prune_at), lease)


def leases(trial: Trial) -> FakeLeases:
    """The calls a ``fake_trial`` made."""
    assert isinstance(trial.caller, FakeLeases)
    return trial.caller


def plain_loop_lrs(config: dict[str, Any], epochs: int, steps_per_epoch: int) -> list[float]:
    """The LR each batch trains at in a plain loop: ``scheduler.step()`` after every
    optimizer step, ``trial.report`` after every epoch."""
    trial = fake_trial(config, epochs)
    model = torch.nn.Linear(2, 1)
    optimizer = trial.optimizer(model.parameters())
    scheduler = trial.scheduler(optimizer, steps_per_epoch)
    lrs = []
    for epoch in range(epochs):
        for _ in range(steps_per_epoch):
            lrs.append(float(optimizer.param_groups[0]["lr"]))
            optimizer.step()
            scheduler.step()
        trial.report(epoch, 1.0)
    return lrs


def finished_trials(api: Api, study_id: int, n: int) -> list[dict[str, Any]]:
    """Each trial's detail (curves), after asserting exactly ``n`` ended COMPLETE or PRUNED
    and none FAIL."""
    trials = api.client().trials(study_id)["items"]
    assert_exact(trials, n)
    assert not [t for t in trials if t["state"] == "FAIL"], trials
    return [httpx.get(f"{api.url}/studies/{study_id}/trials/{t['number']}", timeout=30).json()
            for t in trials]


def assert_curves(details: list[dict[str, Any]], epochs: int) -> None:
    """Every epoch reported arrived with its LR: a COMPLETE trial all ``epochs``."""
    for d in details:
        assert len(d["metric_curve"]) == len(d["lr_curve"]) >= 1, d
        if d["state"] == "COMPLETE":
            assert len(d["metric_curve"]) == epochs, d


@dataclass
class OfflineRun:
    """One W&B run as its offline ``.wandb`` file holds it."""

    project: str
    group: str
    name: str
    config: dict[str, Any]
    history: list[dict[str, Any]]  # the rows logged, in order
    summary: dict[str, Any]  # after every update
    exit_code: int | None


def _chunks(path: Path) -> Iterator[bytes]:
    """The records of a ``.wandb`` file: a 7-byte header (":W&B", magic, version), then
    LevelDB's log format (32 KiB blocks; each piece: CRC, length, type FULL/FIRST/MIDDLE/LAST)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if left < 7 or (kind == 0 and length == 0):  # a block's padding
            pos += left
            continue
        if pos + 7 + length > len(data):  # a piece still being written
            return
        piece = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            yield piece
        elif kind == 2:
            pending = piece
        elif kind == 3:
            pending += piece
        elif kind == 4:
            yield pending + piece


def _key(item: Any) -> str:
    return str(item.key or ".".join(item.nested_key))


def offline_runs(wandb_dir: Path, timeout: float = 30.0) -> list[OfflineRun]:
    """Every offline run under ``wandb_dir`` (its ``wandb/offline-run-*`` folders), once each
    has its exit record: W&B's service writes a run's last records after ``finish()``
    returns. After ``timeout`` seconds, the runs as they are."""
    deadline = time.monotonic() + timeout
    while True:
        runs = _read_offline_runs(wandb_dir)
        if all(r.exit_code is not None for r in runs) or time.monotonic() > deadline:
            return runs
        time.sleep(0.2)


def _read_offline_runs(wandb_dir: Path) -> list[OfflineRun]:
    from wandb.proto import wandb_internal_pb2 as pb

    runs = []
    for path in sorted(wandb_dir.glob("wandb/offline-run-*/run-*.wandb")):
        run = OfflineRun("", "", "", {}, [], {}, None)
        for raw in _chunks(path):
            record = pb.Record()
            record.ParseFromString(raw)
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run.project, run.group = record.run.project, record.run.run_group
                run.name = record.run.display_name
                run.config.update({_key(i): json.loads(i.value_json)
                                   for i in record.run.config.update})
            elif kind == "config":
                run.config.update({_key(i): json.loads(i.value_json)
                                   for i in record.config.update})
            elif kind == "history":
                run.history.append({_key(i): json.loads(i.value_json)
                                    for i in record.history.item})
            elif kind == "summary":
                run.summary.update({_key(i): json.loads(i.value_json)
                                    for i in record.summary.update})
            elif kind == "exit":
                run.exit_code = record.exit.exit_code
        runs.append(run)
    return runs
