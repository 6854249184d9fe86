"""The pure formulas cost O(1) or O(log) per step and give the values of the old step loops."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest

from lrtune.schedules import FAMILIES, Schedule, formulas

STEPS = 100_000  # the default LRTUNE_MAX_CURVE_STEPS


def restart_loop(t: int, T: int, lr0: float, T_0: float, T_mult: int,
                 eta_min_ratio: float) -> float:
    """cosine_restarts as it was: one loop turn per restart before step t."""
    period = formulas.fraction_steps(T_0, T)
    while t >= period:
        t -= period
        period *= T_mult
    eta_min = eta_min_ratio * lr0
    return eta_min + (lr0 - eta_min) * (1.0 + math.cos(math.pi * t / period)) / 2.0


def milestone_count(t: int, T: int, lr0: float, first: float, interval: float,
                    gamma: float) -> float:
    """multistep as it was: milestones rebuilt and counted at every step."""
    passed = sum(1 for m in formulas.multistep_milestones(T, first, interval) if t >= m)
    return lr0 * gamma**passed


@pytest.mark.parametrize("T", [1, 2, 7, 50, 333])
@pytest.mark.parametrize("T_0", [1e-6, 0.01, 0.05, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("T_mult", [1, 2, 3])
def test_cosine_restarts_equals_the_restart_loop(T: int, T_0: float, T_mult: int) -> None:
    params: dict[str, Any] = {"T_0": T_0, "T_mult": T_mult, "eta_min_ratio": 0.01}
    got = Schedule.build("cosine_restarts", params).curve(T, 1, 0.1)
    assert got == [restart_loop(t, T, 0.1, **params) for t in range(T)]


@pytest.mark.parametrize("T", [1, 3, 10, 99, 100, 1001])
@pytest.mark.parametrize(("first", "interval"),
                         [(0.3, 0.3), (0.1, 0.1), (0.7, 0.01), (1e-6, 0.01), (0.5, 1.0),
                          (0.15, 0.35)])
def test_multistep_equals_counting_milestones(T: int, first: float, interval: float) -> None:
    params: dict[str, Any] = {"first": first, "interval": interval, "gamma": 0.5}
    got = Schedule.build("multistep", params).curve(T, 1, 0.1)
    assert got == [milestone_count(t, T, 0.1, **params) for t in range(T)]


def test_a_tiny_first_period_costs_one_step_each() -> None:
    """T_0 of 1e-6 gives 1-step periods: the old loop took ~t turns at step t (minutes for
    100,000 steps); the deadline below is generous, not a timing target."""
    schedule = Schedule.build("cosine_restarts", {"T_0": 1e-6, "T_mult": 1})
    started = time.monotonic()
    lrs = schedule.curve(STEPS, 100, 0.1)
    assert time.monotonic() - started < 30
    assert lrs == [0.1] * STEPS  # each 1-step period starts at its peak


ADVERSARIAL = {"multistep": {"first": 1e-6, "interval": 0.01},
               "cosine_restarts": {"T_0": 1e-6, "T_mult": 2},
               "cyclic": {"step_size": 1e-6}}


def test_every_family_at_the_step_cap_is_cheap() -> None:
    """Every family, with the parameters that used to cost most, plus both modifiers."""
    started = time.monotonic()
    for name in FAMILIES:
        Schedule.build(name, ADVERSARIAL.get(name), {"fraction": 0.9},
                       {"max_lr": 0.05}).curve(STEPS, 100, 0.1)
    assert time.monotonic() - started < 120  # ~2 s on one core; the old multistep ~5 s alone
