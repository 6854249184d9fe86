"""Pure-Python learning-rate formulas, one function per schedule family.

Every function has the signature ``f(t, T, spe, lr0, metrics, **params) -> float``:
``t`` is the 0-based optimizer step, ``T`` the total number of steps, ``spe`` the steps per
epoch, ``lr0`` the base LR, ``metrics`` the validation metric of each finished epoch (only
``plateau`` reads it). These functions are the reference that the PyTorch schedulers, the
fused trainer and the exported code must reproduce. They use only the standard library
(``bisect``, ``functools``, ``math``, ``random``) so that the exporter can paste their source
into user code as it is. Each costs O(1) or O(log) per step, so a whole curve is O(steps);
only ``plateau`` replays the finished epochs' metrics, O(epochs) per step.
"""

from __future__ import annotations

import bisect
import functools
import math
import random
from collections.abc import Callable, Sequence

Formula = Callable[[int, int, int, float, Sequence[float]], float]


def fraction_steps(fraction: float, T: int) -> int:
    """Steps covered by ``fraction`` of a ``T``-step run (at least 1)."""
    return max(1, int(round(fraction * T)))


def constant(t: int, T: int, spe: int, lr0: float, metrics: Sequence[float]) -> float:
    return lr0


def step(
        t: int, T: int, spe: int, lr0: float, metrics: Sequence[float],
        step_size: float, gamma: float) -> float:
    return lr0 * gamma ** (t // fraction_steps(step_size, T))


def multistep(
        t: int, T: int, spe: int, lr0: float, metrics: Sequence[float],
        first: float, interval: float, gamma: float) -> float:
    passed = bisect.bisect_right(multistep_steps(T, first, interval), t)
    return lr0 * gamma**passed


def multistep_milestones(T: int, first: float, interval: float) -> list[int]:
    """Milestone steps at ``first``, ``first + interval``, … (fractions of training) below 1."""
    fractions: list[float] = []
    f = first
    while f < 1.0 - 1e-12:
        fractions.append(f)
        f += interval
    return sorted({fraction_steps(f, T) for f in fractions})


@functools.lru_cache(maxsize=256)
def multistep_steps(T: int, first: float, interval: float) -> tuple[int, ...]:
    """``multistep_milestones`` as a tuple, built once per run instead of once per step."""
    return tuple(multistep_milestones(T, first, interval))


def exponential(
        t: int, T: int, spe: int, lr0: float, metrics: Sequence[float],
        gamma: float) -> float:
    return float(lr0 * (gamma ** (1.0 / spe)) ** t)


def inverse_time(
        t: int, T: int, spe: int, lr0: float, metrics: Sequence[float],
        decay_rate: float) -> float:
    return lr0 / (1.0 + decay_rate * t / spe)


def polynomial(
        t: int, T: int, spe: int, lr0: float, metrics: Sequence[float],
        power: float, end_factor: float) -> float:
    return float(lr0 * end_factor + (lr0 - lr0 * end_factor) * (1.0 - t / T) ** power)


def cosine(
        t: int, T: int, spe: int, lr0: float, metrics: Sequence[float],
        eta_min_ratio: float) -> float:
    eta_min = eta_min_ratio * lr0
    return eta_min + (lr0 - eta_min) * (1.0 + math.cos(math.pi * t / T)) / 2.0


def cosine_restarts(
        t: int, T: int, spe: int, lr0: float, metrics: Sequence[float],
        T_0: float, T_mult: int, eta_min_ratio: float) -> float:
    period = fraction_steps(T_0, T)
    if T_mult == 1:
        t = t % period
    else:
        while t >= period:  # periods grow geometrically: O(log t) restarts to skip
            t -= period
            period *= T_mult
    eta_min = eta_min_ratio * lr0
    return eta_min + (lr0 - eta_min) * (1.0 + math.cos(math.pi * t / period)) / 2.0


def cyclic(
        t: int, T: int, spe: int, lr0: float, metrics: Sequence[float],
        base_ratio: float, step_size: float, mode: str) -> float:
    up = fraction_steps(step_size, T)
    total = 2 * up
    cycle = math.floor(1 + t / total)
    x = 1.0 + t / total - cycle
    scale = x / 0.5 if x <= 0.5 else (x - 1) / (0.5 - 1)
    base = lr0 * base_ratio
    height = (lr0 - base) * scale
    return base + height * (1.0 if mode == "triangular" else 1 / (2.0 ** (cycle - 1)))


def onecycle(
        t: int, T: int, spe: int, lr0: float, metrics: Sequence[float],
        pct_start: float, div_factor: float, final_div_factor: float, anneal: str) -> float:
    initial = lr0 / div_factor
    phases = [(float(pct_start * T) - 1, initial, lr0), (T - 1, lr0, initial / final_div_factor)]
    start = 0.0
    for i, (end, lr_from, lr_to) in enumerate(phases):
        if t <= end or i == len(phases) - 1:
            pct = (t - start) / (end - start)
            if anneal == "cos":
                return lr_to + (lr_from - lr_to) / 2.0 * (math.cos(math.pi * pct) + 1)
            return (lr_to - lr_from) * pct + lr_from
        start = end
    raise AssertionError("unreachable")


def wsd(
        t: int, T: int, spe: int, lr0: float, metrics: Sequence[float],
        warmup: float, decay: float, shape: str) -> float:
    warm = int(round(warmup * T))
    fall = fraction_steps(decay, T)
    if t < warm:
        return lr0 * (t + 1) / warm
    if t < T - fall:
        return lr0
    p = (t - (T - fall)) / fall
    if shape == "linear":
        return lr0 * (1.0 - p)
    if shape == "cosine":
        return lr0 * (1.0 + math.cos(math.pi * p)) / 2.0
    return lr0 * (1.0 - math.sqrt(p))


def plateau(
        t: int, T: int, spe: int, lr0: float, metrics: Sequence[float],
        factor: float, patience: int, threshold: float, cooldown: int,
            mode: str) -> float:
    """ReduceLROnPlateau: epoch ``t // spe`` sees the metrics of all earlier epochs."""
    lr = lr0
    best = math.inf if mode == "min" else -math.inf
    bad = 0
    cooling = 0
    for value in metrics[: t // spe]:
        value = float(value)
        better = value < best * (1.0 - threshold) if mode == "min" else value > best * (
            threshold + 1.0
        )
        if better:
            best = value
            bad = 0
        else:
            bad += 1
        if cooling > 0:
            cooling -= 1
            bad = 0
        if bad > patience:
            new_lr = lr * factor
            if lr - new_lr > 1e-8:
                lr = new_lr
            cooling = cooldown
            bad = 0
    return lr


def random_lr(
        t: int, T: int, spe: int, lr0: float, metrics: Sequence[float],
        low: float, high: float, seed: int) -> float:
    return lr0 * random.Random(seed * 1_000_003 + t).uniform(low, high)


def warmup_sequential(
        inner: Formula, t: int, T: int, spe: int, lr0: float, metrics: Sequence[float],
        fraction: float, start_factor: float) -> float:
    """Linear warmup from ``start_factor * lr0`` to ``lr0``, then ``inner`` over the rest."""
    w = fraction_steps(fraction, T)
    if t < w:
        return lr0 * (start_factor + (1.0 - start_factor) * t / w)
    return inner(t - w, T - w, spe, lr0, metrics)


def warmup_scaled(
        inner: Formula, t: int, T: int, spe: int, lr0: float, metrics: Sequence[float],
        fraction: float, start_factor: float) -> float:
    """Linear warmup factor multiplied onto ``inner`` (for metric-driven families)."""
    w = fraction_steps(fraction, T)
    scale = start_factor + (1.0 - start_factor) * t / w if t < w else 1.0
    return scale * inner(t, T, spe, lr0, metrics)


def clip(
        inner: Formula, t: int, T: int, spe: int, lr0: float, metrics: Sequence[float],
        min_lr: float, max_lr: float) -> float:
    return min(max(inner(t, T, spe, lr0, metrics), min_lr), max_lr)
