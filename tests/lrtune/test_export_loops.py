"""Exported code in an ordinary training loop: PyTorch (every batch optimizer.step() then
scheduler.step(), the documented end-of-epoch call for plateau) and a real Keras 3 model.fit
(torch backend) set the pure formula's LR at every step, hold it past TOTAL_STEPS, and build
the optimizer the worker trains with."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

from lrtune.export import KERAS_MARKER, Framework, export
from lrtune.optimizers import OptimizerChoice
from lrtune.schedules import FAMILIES, Schedule
from lrtune.space import TrialConfig
from lrtune.tasks import BUILTIN_TASKS
from lrtune_worker.schedulers import build_optimizer

EPOCHS, SPE = 6, 5  # a 30-step horizon
TOTAL = EPOCHS * SPE
PAST = 1  # epochs trained past the horizon
LR0 = 0.1
WARMUP = {"fraction": 0.1, "start_factor": 0.2}
DIGITS = BUILTIN_TASKS["digits-mlp"]
# Each objective stalls at other epochs, so monitoring the wrong metric, or in the wrong mode,
# drops the LR at other steps; the last value drops it past the horizon.
METRICS = {"val_loss": [1.0, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8],
           "val_acc": [0.2, 0.5, 0.9, 0.9, 0.9, 0.9, 0.9]}
KERAS_NAMES = {"val_loss": "val_loss", "val_acc": "val_accuracy"}  # metrics=["accuracy"]
PLATEAU = {"patience": 1, "factor": 0.3}
# Parameters beyond the defaults that take other code paths (LambdaLR over the formula) or
# misbehaved past the horizon (complex polynomial, negative or rising wsd, rising one-cycle).
VARIANTS: dict[str, list[dict[str, Any]]] = {
    "polynomial": [{"power": 1.5, "end_factor": 0.01}, {"power": 2.0, "end_factor": 0.0}],
    "wsd": [{"shape": "cosine"}, {"shape": "sqrt"}],
    "onecycle": [{"anneal": "linear"}],
    "cyclic": [{"mode": "triangular2"}],
    "cosine_restarts": [{"T_mult": 2}],
}


@dataclass(frozen=True)
class Case:
    schedule: Schedule
    objective: str = "val_loss"

    @property
    def direction(self) -> str:
        return DIGITS.direction(self.objective)

    @property
    def metric_driven(self) -> bool:
        return FAMILIES[self.schedule.family].metric_driven

    def code(self, framework: Framework) -> str:
        # the defaults are val_loss / minimize: pass the study's objective only where it differs
        study = ({} if self.objective == "val_loss" else
                 {"objective": self.objective, "direction": self.direction})
        config = TrialConfig(self.schedule, OptimizerChoice.build("sgd", LR0))
        return export(config, framework, EPOCHS, SPE, "test", **study)

    def reference(self, steps: int) -> list[float]:
        """The pure formula's LR at each step; past the horizon the documented behaviour:
        plateau goes on reading the metric, every other family holds its last step's LR."""
        fn = self.schedule.function()
        metrics = METRICS[self.objective] if self.metric_driven else []
        last = TOTAL - 1
        return [fn(t if self.metric_driven else min(t, last), TOTAL, SPE, LR0, metrics)
                for t in range(steps)]


def _cases() -> list[Case]:
    out = []
    for name in FAMILIES:
        if name == "plateau":
            for objective in ("val_loss", "val_acc"):
                mode = "min" if DIGITS.direction(objective) == "minimize" else "max"
                for warmup in (None, WARMUP):
                    out.append(Case(Schedule.build(name, {**PLATEAU, "mode": mode}, warmup),
                                    objective))
            continue
        for params in [{}, *VARIANTS.get(name, [])]:
            for warmup in (None, WARMUP):
                out.append(Case(Schedule.build(name, params, warmup)))
    out.append(Case(Schedule.build("cosine", {}, WARMUP, {"min_lr": 0.01, "max_lr": 0.08})))
    return out


CASES = _cases()
# Keras' torch backend converts tensors with numpy 1's __array__ signature (keras 3.15, numpy 2)
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


def _case_id(case: Case) -> str:
    s = case.schedule
    params = ",".join(f"{k}={v}" for k, v in s.params.items()
                      if k in (VARIANTS.get(s.family) or [{}])[0] or k == "mode")
    mods = "+warmup" * (s.warmup is not None) + "+clip" * (s.clip is not None)
    objective = f"-{case.objective}" if case.metric_driven else ""
    return f"{s.family}{mods}{objective}" + (f"[{params}]" if params else "")


def _relative_errors(got: list[float], want: list[float]) -> list[tuple[int, float, float]]:
    """(step, got, want) wherever |got - want| > 1e-9 * |want|."""
    assert len(got) == len(want)
    return [(t, a, b) for t, (a, b) in enumerate(zip(got, want, strict=True))
            if not abs(a - b) <= 1e-9 * abs(b)]


# ---- PyTorch -----------------------------------------------------------------------------

def _torch_loop(case: Case, epochs: int) -> list[float]:
    """LR of every optimizer step of an ordinary loop driving the exported code."""
    code = case.code("pytorch")
    if case.metric_driven:
        assert "scheduler.end_epoch(val_metric)" in code and case.objective in code
    gen = torch.Generator().manual_seed(0)
    model = torch.nn.Linear(3, 1)
    x, y = torch.randn(SPE, 4, 3, generator=gen), torch.randn(SPE, 4, 1, generator=gen)
    ns: dict[str, Any] = {"model": model}
    exec(compile(code, "<pytorch-export>", "exec"), ns)
    optimizer, scheduler = ns["optimizer"], ns["scheduler"]
    lrs = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the documented loop must be the one torch expects
        for epoch in range(epochs):
            for batch in range(SPE):
                lrs.append(float(optimizer.param_groups[0]["lr"]))
                optimizer.zero_grad()
                torch.nn.functional.mse_loss(model(x[batch]), y[batch]).backward()
                optimizer.step()
                scheduler.step()
            if case.metric_driven:
                scheduler.end_epoch(METRICS[case.objective][epoch])
    return lrs


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_pytorch_export_follows_the_formula_in_an_ordinary_loop(case: Case) -> None:
    got = _torch_loop(case, EPOCHS)
    want = case.reference(TOTAL)
    assert not _relative_errors(got, want), _relative_errors(got, want)[:5]
    if case.metric_driven:  # the metrics must make plateau drop, or this proves little
        assert min(want) < LR0 * 0.99


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_pytorch_export_holds_past_the_horizon(case: Case) -> None:
    got = _torch_loop(case, EPOCHS + PAST)
    assert max(got[TOTAL:]) <= got[TOTAL - 1], "the LR climbs past TOTAL_STEPS"
    want = case.reference(TOTAL + PAST * SPE)
    assert not _relative_errors(got, want), _relative_errors(got, want)[:5]


def test_pytorch_plateau_export_refuses_a_missed_metric() -> None:
    case = next(c for c in CASES if c.metric_driven)
    ns: dict[str, Any] = {"model": torch.nn.Linear(3, 1)}
    exec(compile(case.code("pytorch"), "<pytorch-export>", "exec"), ns)
    optimizer, scheduler = ns["optimizer"], ns["scheduler"]
    with pytest.raises(RuntimeError, match="end_epoch"):
        for _ in range(SPE + 1):
            optimizer.step()
            scheduler.step()


# ---- Keras 3 (torch backend) -------------------------------------------------------------

def _keras() -> ModuleType:
    """Keras 3 on the torch backend. Called in each test's body, not a fixture, so that a
    missing keras FAILs (not errors) under CI=true; elsewhere it skips."""
    os.environ["KERAS_BACKEND"] = "torch"
    try:
        import keras
    except ImportError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"keras 3 is required (the dev extra installs it): {e}")
        pytest.skip(f"keras 3 is not installed: {e}")
    assert keras.backend.backend() == "torch", "keras was imported with another backend"
    module: ModuleType = keras
    return module


_FITS: dict[int, tuple[list[float], float]] = {}  # by id of the case: both tests use one fit


def _keras_fit(case: Case, keras: ModuleType) -> tuple[list[float], float]:
    """LR the optimizer holds during each batch of a real model.fit over EPOCHS + PAST epochs,
    and the base LR it was built with."""
    if id(case) not in _FITS:
        _FITS[id(case)] = _run_keras_fit(case, keras)
    return _FITS[id(case)]


def _run_keras_fit(case: Case, keras: ModuleType) -> tuple[list[float], float]:
    code = case.code("keras")
    assert KERAS_MARKER in code
    ns: dict[str, Any] = {}
    exec(compile(code, "<keras-export>", "exec"), ns)
    optimizer = ns["optimizer"]
    base_lr = float(optimizer.learning_rate.value)
    lrs: list[float] = []

    class Metrics(keras.callbacks.Callback):  # type: ignore[misc,name-defined]
        """Replaces Keras' validation metrics by the scripted ones that make plateau drop."""

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            assert logs is not None
            for objective, values in METRICS.items():
                name = KERAS_NAMES[objective]
                assert name in logs, (name, sorted(logs))
                logs[name] = values[epoch]

    class Record(keras.callbacks.Callback):  # type: ignore[misc,name-defined]
        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            lrs.append(float(self.model.optimizer.learning_rate.value))

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=optimizer, metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4 * SPE, 3)).astype("float32")
    y = rng.integers(0, 2, size=4 * SPE)
    model.fit(x, y, batch_size=4, epochs=EPOCHS + PAST, shuffle=False, verbose=0,
              validation_data=(x[:8], y[:8]),
              callbacks=[Metrics(), ns["LrtuneSchedule"](), Record()])
    return lrs, base_lr


def _keras_errors(got: list[float], want: list[float]) -> list[tuple[int, float, float]]:
    """(step, got, want) wherever |got - want| > 1e-6 * LR0 (float32 LR variable)."""
    assert len(got) == len(want)
    return [(t, a, b) for t, (a, b) in enumerate(zip(got, want, strict=True))
            if not abs(a - b) <= 1e-6 * LR0]


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_keras_export_follows_the_formula_in_model_fit(case: Case) -> None:
    got, base_lr = _keras_fit(case, _keras())
    assert base_lr == pytest.approx(LR0, rel=1e-7)
    want = case.reference(TOTAL)
    assert not _keras_errors(got[:TOTAL], want), _keras_errors(got[:TOTAL], want)[:5]


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_keras_export_holds_past_the_horizon(case: Case) -> None:
    got, _ = _keras_fit(case, _keras())
    assert max(got[TOTAL:]) <= got[TOTAL - 1] + 1e-6 * LR0, "the LR climbs past TOTAL_STEPS"
    want = case.reference(TOTAL + PAST * SPE)
    assert not _keras_errors(got, want), _keras_errors(got, want)[:5]


# ---- optimizers --------------------------------------------------------------------------

OPTIMIZER_CASES = [
    ("sgd", 1e-3, {}),
    ("momentum", 1e-3, {"momentum": 0.85, "nesterov": True}),
    ("momentum", 0.0, {"momentum": 0.95, "nesterov": False}),
    ("adam", 1e-3, {"beta1": 0.85, "beta2": 0.995}),
    ("adam", 0.0, {}),
    ("adamw", 0.0, {"beta1": 0.9, "beta2": 0.99}),
    ("adamw", 1e-2, {}),
    ("rmsprop", 1e-4, {"alpha": 0.95, "momentum": 0.5}),
    ("rmsprop", 0.0, {}),
]


def _choice(name: str, weight_decay: float, params: dict[str, Any]) -> OptimizerChoice:
    return OptimizerChoice.build(name, LR0, weight_decay, params)


def _worker_group(choice: OptimizerChoice) -> dict[str, Any]:
    """The hyper-parameters of the optimizer the worker trains the trial with."""
    group = build_optimizer([torch.nn.Parameter(torch.zeros(2))], choice).param_groups[0]
    return {k: v for k, v in group.items() if k != "params"}


def _config(choice: OptimizerChoice) -> TrialConfig:
    return TrialConfig(Schedule.build("constant"), choice)


@pytest.mark.parametrize("name,weight_decay,params", OPTIMIZER_CASES)
def test_pytorch_export_builds_the_trials_optimizer(name: str, weight_decay: float,
                                                    params: dict[str, Any]) -> None:
    choice = _choice(name, weight_decay, params)
    ns: dict[str, Any] = {"model": torch.nn.Linear(3, 1)}
    exec(compile(export(_config(choice), "pytorch", EPOCHS, SPE), "<pytorch-export>", "exec"),
         ns)
    group = {k: v for k, v in ns["optimizer"].param_groups[0].items()
             if k not in ("params", "initial_lr")}
    assert group == _worker_group(choice)


@pytest.mark.parametrize("name,weight_decay,params", OPTIMIZER_CASES)
def test_keras_export_builds_the_trials_optimizer(name: str, weight_decay: float,
                                                  params: dict[str, Any]) -> None:
    _keras()  # fails or skips before the exported code imports keras
    choice = _choice(name, weight_decay, params)
    ns: dict[str, Any] = {}
    exec(compile(export(_config(choice), "keras", EPOCHS, SPE), "<keras-export>", "exec"), ns)
    opt = ns["optimizer"]
    group = _worker_group(choice)
    # torch's name for each hyper-parameter -> Keras'
    names = {"weight_decay": "weight_decay", "momentum": "momentum", "nesterov": "nesterov",
             "eps": "epsilon", "alpha": "rho", "amsgrad": "amsgrad", "centered": "centered"}
    want = {keras_name: group[k] for k, keras_name in names.items() if k in group}
    if "betas" in group:
        want["beta_1"], want["beta_2"] = group["betas"]
    got = {k: getattr(opt, k) for k in want}
    assert type(opt).__name__ == type(build_optimizer([torch.nn.Parameter(torch.zeros(1))],
                                                      choice)).__name__
    assert float(opt.learning_rate.value) == pytest.approx(LR0, rel=1e-7)
    assert got == want
