"""Plugin tasks that stream their batches (a DataLoader, a plain generator) instead of giving
tensors: trained alone and fused, validation metrics averaged over batches as one pass over
the whole set would give them, and a real ``lrtune worker`` training a study of one."""

from __future__ import annotations

import importlib
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from lrtune.optimizers import OptimizerChoice
from lrtune.schedules import Schedule
from lrtune.settings import Settings
from lrtune.space import TrialConfig
from lrtune.spec import StudySpec
from lrtune.store import Store
from lrtune_worker.autopack import _auto
from lrtune_worker.feed import Feed
from lrtune_worker.fused import _Pack, _Stepper, evaluate, train_pack
from lrtune_worker.lr_find import sweep
from lrtune_worker.tasks import Task, TaskData, get_task
from lrtune_worker.tasks.base import Batch, TensorBatches
from lrtune_worker.train import TrainResult, train_trial, validate
from tests.conftest import lrtune_env, spawn, stop
from tests.faults.common import PLUGINS, assert_exact_budget, trials, wait_status
from tests.worker.test_fused import ScriptedPruner, compare

CPU = torch.device("cpu")
plugin = importlib.import_module("lrtune_fault_tasks")  # on sys.path through PLUGINS
WineStream: type[Task] = plugin.WineStream  # DataLoaders; validation in batches 16, 16, 4
TRAIN, VAL = plugin.wine()[0].tensors, plugin.wine()[1].tensors


class WineGenerators(WineStream):
    """The same data through plain generators (no ``len()``, so it says its steps per epoch);
    validation in batches of 10, 10, 10 and 6."""

    def train_batches(self, batch_size: int, order: torch.Generator) -> Iterator[Batch]:
        x, y = TRAIN
        for idx in torch.randperm(len(x), generator=order).split(batch_size):
            yield x[idx], y[idx]

    def val_batches(self) -> Iterator[Batch]:
        x, y = VAL
        for start in range(0, len(x), 10):
            yield x[start:start + 10], y[start:start + 10]

    def steps_per_epoch(self, batch_size: int) -> int:
        return math.ceil(len(TRAIN[0]) / batch_size)


class WineTensors(Task):
    """Wine the older way: all of it as tensors."""

    info = WineStream.info
    model = WineStream.model
    loss = WineStream.loss
    metric_tensors = WineStream.metric_tensors

    def data(self) -> TaskData:
        return TaskData(*TRAIN, *VAL)


class WineTensorsStreamed(WineTensors):
    """Streams exactly the batches ``WineTensors`` trains and validates on."""

    def train_batches(self, batch_size: int, order: torch.Generator) -> TensorBatches:
        return TensorBatches(*TRAIN, batch_size, order)

    def val_batches(self) -> list[Batch]:
        return [VAL]


class WineFloatMetrics(WineStream):
    """Metrics as Python floats: a fused pack computes them trial by trial."""

    def metrics(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        return {"val_loss": float(self.loss(output, target)),
                "val_acc": float((output.argmax(dim=1) == target).float().mean())}


STREAMING = [WineStream(), WineGenerators()]
IDS = ["dataloader", "generator"]


def config(family: str = "cosine", lr: float = 0.01, optimizer: str = "adam",
           **params: float) -> TrialConfig:
    return TrialConfig(Schedule.build(family, params), OptimizerChoice.build(optimizer, lr))


def one_pass(task: Task, model: nn.Module) -> dict[str, float]:
    with torch.no_grad():
        return task.metrics(model(VAL[0]), VAL[1])


@pytest.mark.parametrize("task", STREAMING + [WineFloatMetrics()],
                         ids=[*IDS, "float-metrics"])
def test_validation_over_batches_equals_one_pass_over_the_whole_set(task: Task) -> None:
    torch.manual_seed(3)
    model = task.model()
    batches = list(Feed(task, CPU).val())
    assert len(batches) > 1 and len({len(y) for _, y in batches}) == 2  # uneven batches
    averaged = validate(task, model, batches)
    whole = one_pass(task, model)
    assert averaged == pytest.approx(whole, rel=1e-6, abs=1e-9)
    with torch.no_grad():  # an unweighted mean of the batches' losses would be another value
        unweighted = sum(float(task.loss(model(x), y)) for x, y in batches) / len(batches)
    assert abs(unweighted - whole["val_loss"]) > 1e-4


@pytest.mark.parametrize("task", [WineStream(), WineGenerators(), WineFloatMetrics()],
                         ids=[*IDS, "float-metrics"])
def test_a_pack_averages_each_trials_metrics_as_one_pass_would(task: Task) -> None:
    seeds = [1, 2, 3]
    pack = _Pack(task, [config()] * 3, seeds, CPU)
    got = dict(evaluate(pack, task, Feed(task, CPU).val(), [0, 2], _Stepper(False)))
    assert sorted(got) == [0, 2]  # position 1 is not asked for
    for j in (0, 2):
        torch.manual_seed(seeds[j])
        assert got[j] == pytest.approx(one_pass(task, task.model()), rel=1e-5, abs=1e-9)


def test_streaming_the_tensors_batches_trains_exactly_like_the_tensors() -> None:
    """The trainer's streaming path adds nothing: the same batches, the same numbers."""
    for cfg in (config(), config("plateau", 0.05, "momentum", patience=0, factor=0.5)):
        streamed = train_trial(WineTensorsStreamed(), cfg, 3, "val_loss", 4, CPU)
        assert streamed == train_trial(WineTensors(), cfg, 3, "val_loss", 4, CPU)
    assert WineTensorsStreamed().steps_per_epoch(16) == WineTensors().steps_per_epoch(16) == 9


@pytest.mark.parametrize("task", STREAMING, ids=IDS)
def test_a_streaming_task_learns_and_is_seeded(task: Task) -> None:
    a = train_trial(task, config(lr=0.02), 4, "val_acc", 7, CPU)
    assert a.outcome == "complete" and a.epochs_run == 4 and len(a.lrs) == 4
    assert a.metrics["val_acc"] > 0.85 and a.values[-1] > a.values[0]
    assert sorted(a.metrics) == ["train_loss", "val_acc", "val_loss"]
    assert train_trial(task, config(lr=0.02), 4, "val_acc", 7, CPU) == a
    other = train_trial(task, config(lr=0.02), 4, "val_acc", 8, CPU)
    assert other.metrics["val_loss"] != a.metrics["val_loss"]
    assert task.steps_per_epoch(16) == 9 and task.steps_per_epoch(32) == 5


def pack_configs() -> list[TrialConfig]:
    return [config("cosine", 0.01, eta_min_ratio=0.01),
            TrialConfig(Schedule.build("step", {"step_size": 0.25, "gamma": 0.5},
                                       warmup={"fraction": 0.2}),
                        OptimizerChoice.build("adam", 0.02)),
            config("plateau", 0.03, patience=0, factor=0.5),
            config("onecycle", 0.02, pct_start=0.3)]


def pack_against_sequential(task: Task, prune_at: list[int | None], block: int = 0,
                            compile_after: float | None = None, device: torch.device = CPU
                            ) -> list[TrainResult]:
    """Fused against alone: trial i alone with its own seed for the weights and the first
    trial's seed for the data order, as the pack shares it."""
    cfgs, seeds, epochs = pack_configs(), [11, 12, 13, 14], 4
    alone = [train_trial(task, c, epochs, "val_loss", s, device, ScriptedPruner(p),
                         order_seed=seeds[0])
             for c, s, p in zip(cfgs, seeds, prune_at, strict=True)]
    ended: list[int] = []
    fused = train_pack(task, cfgs, epochs, "val_loss", seeds, device,
                       [ScriptedPruner(p) for p in prune_at], lambda i, r: ended.append(i),
                       compile_after=compile_after, block=block)
    compare(fused, alone)
    assert sorted(ended) == [0, 1, 2, 3]
    return fused


@pytest.mark.parametrize("task", STREAMING, ids=IDS)
@pytest.mark.parametrize("block", [0, 2], ids=["one-block", "blocks-of-2"])
def test_a_pack_of_a_streaming_task_equals_sequential_with_the_packs_batch_order(
        task: Task, block: int) -> None:
    fused = pack_against_sequential(task, [None, 1, None, 2], block)
    assert [r.outcome for r in fused] == ["complete", "pruned", "complete", "pruned"]
    own_order = train_trial(task, pack_configs()[2], 4, "val_loss", 13, CPU)
    assert own_order.values != pytest.approx(fused[2].values, rel=1e-4)  # the order is shared


def test_a_compiled_pack_of_a_streaming_task_equals_sequential() -> None:
    pack_against_sequential(WineStream(), [None] * 4, compile_after=0)
    assert not _Stepper.broken


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("compile_after", [None, 0.0], ids=["eager", "compiled"])
def test_a_pack_of_a_streaming_task_on_cuda_equals_sequential(
        compile_after: float | None) -> None:
    """Batches come from the DataLoader on the CPU and are moved to the GPU one by one."""
    pack_against_sequential(WineStream(), [None, 1, None, 2], compile_after=compile_after,
                            device=torch.device("cuda"))
    assert not _Stepper.broken


class MiscountedWine(WineGenerators):
    def __init__(self, says: int) -> None:
        self.says = says

    def steps_per_epoch(self, batch_size: int) -> int:
        return self.says


class WineWithoutLength(WineGenerators):
    steps_per_epoch = Task.steps_per_epoch


def test_an_epoch_is_exactly_steps_per_epoch_batches() -> None:
    with pytest.raises(ValueError, match=r"gave 9 training batches in an epoch, fewer than "
                                         r"its steps_per_epoch \(10\)"):
        train_trial(MiscountedWine(10), config(), 1, "val_loss", 0, CPU)
    with pytest.raises(ValueError, match=r"more training batches .* steps_per_epoch \(8\)"):
        train_pack(MiscountedWine(8), pack_configs()[:2], 1, "val_loss", [0, 1], CPU)
    with pytest.raises(TypeError, match="override steps_per_epoch"):
        WineWithoutLength().steps_per_epoch(16)


def test_lr_range_test_and_auto_pack_take_a_streaming_tasks_batches(
        caplog: pytest.LogCaptureFixture) -> None:
    for task in STREAMING:
        test = sweep(task, "adam", CPU, steps=60)
        assert 0 < test.low < test.high
        assert sweep(task, "adam", CPU, steps=60) == test  # seeded
    assert isinstance(get_task("stream-wine"), WineStream)  # the entry point, as workers load it
    assert 1 <= _auto("stream-wine", "cpu", 4) <= 4


def test_a_worker_trains_a_study_of_a_streaming_plugin_task(tmp_path: Path) -> None:
    """A real ``lrtune worker`` on SQLite: its LR range test, fused packs of 2 and an
    auto-sized pack, each on the plugin's DataLoaders."""
    url = f"sqlite:///{tmp_path / 'stream.db'}"
    store = Store(Settings(database_url=url))
    space = {"optimizers": ["adam"], "families": ["cosine", "onecycle", "step"]}
    studies = [store.create_study(StudySpec(
        name=name, task="stream-wine", epochs=3, n_trials=4, pack=pack, objective="val_acc",
        pruner={"name": "none"}, space={**space, "lr": lr}), "me")
        for name, pack, lr in (("packs-of-2", 2, "auto"),
                               ("auto-pack", "auto", {"low": 3e-3, "high": 3e-2}))]
    worker = spawn(["worker"], lrtune_env(url, PYTHONPATH=PLUGINS), tmp_path / "worker.log")
    try:
        for record in studies:
            assert wait_status(store, record, 180) == "done"
    finally:
        stop(worker)
        print((tmp_path / "worker.log").read_text()[-3000:])
    try:
        for record in studies:
            assert_exact_budget(store, record)
            done = trials(store, record)
            assert {t.state.name for t in done} == {"COMPLETE"}
            for trial in done:
                assert trial.user_attrs["steps_per_epoch"] == 9  # len() of its DataLoader
                assert sorted(trial.user_attrs["metrics"]) == ["train_loss", "val_acc",
                                                               "val_loss"]
                assert len(trial.intermediate_values) == 3
        assert store.get_study(studies[0].id).lr_range is not None
        assert "auto pack for stream-wine on cpu" in (tmp_path / "worker.log").read_text()
    finally:
        store.db.engine.dispose()
        store.optuna_storage.engine.dispose()
