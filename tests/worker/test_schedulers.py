"""Acceptance: pure lr() == the built torch scheduler == exported PyTorch code == Keras lr_at."""

import warnings

import pytest
import torch

from lrtune.export import KERAS_MARKER, export
from lrtune.optimizers import OPTIMIZERS, OptimizerChoice
from lrtune.schedules import Schedule
from lrtune.space import TrialConfig
from lrtune_worker.schedulers import build_optimizer, build_scheduler
from tests.grid import HORIZONS, METRICS, grid, schedule_id

GRID = grid()
LR0 = 0.1


def drive(optimizer: torch.optim.Optimizer, step_batch, step_epoch, T: int, spe: int
          ) -> list[float]:
    lrs = []
    for t in range(T):
        lrs.append(float(optimizer.param_groups[0]["lr"]))
        optimizer.step()
        if (t + 1) % spe:
            step_batch()
        else:
            step_epoch(METRICS[(t + 1) // spe - 1])
    return lrs


def close(got: list[float], want: list[float]) -> bool:
    if len(got) != len(want):
        return False
    return all(abs(a - b) <= 1e-9 * abs(b) for a, b in zip(got, want, strict=True))


def reference(schedule: Schedule, T: int, spe: int) -> list[float] | None:
    try:
        return schedule.curve(T, spe, LR0, METRICS)
    except ValueError:
        return None


def check_driven(schedule: Schedule, T: int, spe: int) -> None:
    """The built scheduler, driven batch by batch over ``T`` steps (an epoch cut short
    ends with ``after_epoch`` too), follows the pure formula and never steps past ``T``."""
    want = reference(schedule, T, spe)
    if want is None:
        pytest.skip("horizon too short for this schedule")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=LR0)
    driver = build_scheduler(opt, schedule, T, spe)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = drive(opt, lambda: driver.after_batch(),
                    lambda m: (driver.after_batch(), driver.after_epoch(m)), T, spe)
        if T % spe:
            driver.after_epoch(METRICS[T // spe])
    assert close(got, want), (type(driver.scheduler).__name__, got[:5], want[:5])
    assert isinstance(float(opt.param_groups[0]["lr"]), float)


@pytest.mark.parametrize("schedule", GRID, ids=schedule_id)
@pytest.mark.parametrize("epochs,spe", HORIZONS)
def test_torch_scheduler_matches_pure_formula(schedule: Schedule, epochs: int, spe: int) -> None:
    check_driven(schedule, epochs * spe, spe)


@pytest.mark.parametrize("schedule", GRID, ids=schedule_id)
def test_a_run_ending_mid_epoch_steps_once_per_batch(schedule: Schedule) -> None:
    """A horizon ladder's rung may end mid-epoch (2 epochs of 8 steps and 3 more): the cut
    epoch's ``after_epoch`` must not step past the run (OneCycleLR raises there; a polynomial
    decay past its end is complex)."""
    check_driven(schedule, 19, 8)


def test_builtin_classes_are_used() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR0)
    expected = {"step": "StepLR", "multistep": "MultiStepLR", "exponential": "ExponentialLR",
                "polynomial": "PolynomialLR", "cosine": "CosineAnnealingLR",
                "cosine_restarts": "CosineAnnealingWarmRestarts", "cyclic": "CyclicLR",
                "onecycle": "OneCycleLR", "plateau": "ReduceLROnPlateau",
                "inverse_time": "LambdaLR", "wsd": "LambdaLR"}
    for family, cls in expected.items():
        d = build_scheduler(opt, Schedule.build(family), 100, 10)
        assert type(d.scheduler).__name__ == cls
    d = build_scheduler(opt, Schedule.build("cosine", warmup={}), 100, 10)
    assert type(d.scheduler).__name__ == "SequentialLR"


def _config(schedule: Schedule) -> TrialConfig:
    return TrialConfig(schedule, OptimizerChoice.build("adamw", LR0, 1e-4))


@pytest.mark.parametrize("schedule", GRID, ids=schedule_id)
def test_exported_pytorch_code_reproduces_the_schedule(schedule: Schedule) -> None:
    epochs, spe = 7, 13
    T = epochs * spe
    want = reference(schedule, T, spe)
    assert want is not None
    code = export(_config(schedule), "pytorch", epochs, spe)
    ns: dict = {"model": torch.nn.Linear(2, 1)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(code, "<export>", "exec"), ns)
        sched, opt = ns["scheduler"], ns["optimizer"]
        # the loop the export documents: step() every batch, end_epoch(metric) for plateau
        end_epoch = getattr(sched, "end_epoch", lambda m: None)
        got = drive(opt, sched.step, lambda m: (sched.step(), end_epoch(m)), T, spe)
    assert close(got, want)


@pytest.mark.parametrize("schedule", GRID, ids=schedule_id)
def test_keras_schedule_function_in_plain_python(schedule: Schedule) -> None:
    epochs, spe = 7, 13
    want = reference(schedule, epochs * spe, spe)
    code = export(_config(schedule), "keras", epochs, spe)
    plain, _, wiring = code.partition(KERAS_MARKER)
    assert "keras.callbacks.Callback" in wiring and "import torch" not in code
    ns: dict = {}
    exec(compile(plain, "<keras-export>", "exec"), ns)
    got = [ns["lr_at"](t, METRICS[: t // spe]) for t in range(epochs * spe)]
    assert close(got, want)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optimizers_build_with_their_parameters(name: str) -> None:
    choice = OptimizerChoice.build(name, 0.05, 1e-3)
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(2))], choice)
    group = opt.param_groups[0]
    assert group["lr"] == 0.05 and group["weight_decay"] == 1e-3
    if name == "momentum":
        assert group["momentum"] == 0.9
    if name in ("adam", "adamw"):
        assert group["betas"] == (0.9, 0.999)
