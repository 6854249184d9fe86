"""LR range test analysis on synthetic sweeps, and ``space.lr: "auto"`` in specs."""

from __future__ import annotations

import json
import math

import pytest

from lrtune.errors import SpecError
from lrtune.lr_range import (
    LrBounds,
    analyse,
    combine,
    diverged_at,
    exponential_lrs,
    resolved,
    smooth,
)
from lrtune.results import parse_spec
from lrtune.space import SearchSpace


def bowl(lrs: list[float], best: float) -> list[float]:
    """A loss that falls as log LR approaches ``best`` and blows up beyond it."""
    out = []
    for lr in lrs:
        d = math.log10(lr / best)
        out.append(2.0 - 1.5 * math.exp(-(d ** 2)) if d < 0 else 0.5 + 40 * d ** 2)
    return out


def test_exponential_lrs_span_the_sweep() -> None:
    lrs = exponential_lrs(1e-6, 10.0, 50)
    assert lrs[0] == pytest.approx(1e-6) and lrs[-1] == pytest.approx(10.0)
    ratios = {round(b / a, 9) for a, b in zip(lrs, lrs[1:], strict=False)}
    assert len(ratios) == 1
    with pytest.raises(ValueError):
        exponential_lrs(1.0, 0.1, 10)


def test_smoothing_is_bias_corrected_and_stops_at_inf() -> None:
    assert smooth([3.0, 3.0, 3.0]) == pytest.approx([3.0, 3.0, 3.0])
    assert smooth([1.0, math.nan, 1.0])[1:] == [math.inf, math.inf]
    assert diverged_at([5.0, 4.0, 3.0, 13.0, 1.0]) == 3
    assert diverged_at([5.0, 4.0]) == 2


@pytest.mark.parametrize("best", [1e-3, 3e-2, 0.5])
def test_bounds_bracket_the_loss_minimum(best: float) -> None:
    lrs = exponential_lrs(1e-6, 10.0, 200)
    test = analyse("sgd", lrs, bowl(lrs, best))
    assert test.reason is None
    assert best / 2 <= test.high <= best * 2  # where the (smoothed) loss bottoms out
    assert test.high / test.low >= 100  # at least two decades searched
    assert test.low < test.steepest < test.high


def test_a_loss_that_never_falls_keeps_the_swept_range() -> None:
    lrs = exponential_lrs(1e-4, 1.0, 40)
    test = analyse("adam", lrs, [2.0 + i * 0.01 for i in range(40)])
    assert test.reason and "never decreased" in test.reason
    assert test.low == lrs[0] and test.high > test.low


def test_immediate_divergence_is_reported() -> None:
    lrs = exponential_lrs(1e-4, 1.0, 40)
    test = analyse("sgd", lrs, [1.0, math.inf] + [math.inf] * 38)
    assert test.reason and "diverged at once" in test.reason


def test_combined_bounds_cover_every_optimizer_and_round_trip() -> None:
    lrs = exponential_lrs(1e-6, 10.0, 120)
    diverging = bowl(lrs, 0.5)[:100] + [math.inf] * 20
    tests = [analyse("sgd", lrs, diverging), analyse("adam", lrs, bowl(lrs, 3e-3))]
    bounds = combine(tests)
    assert bounds.low == min(t.low for t in tests) and bounds.high == max(t.high for t in tests)
    again = LrBounds.from_dict(json.loads(json.dumps(bounds.to_dict(), allow_nan=False)))
    assert again == bounds
    assert set(bounds.summary()["by_optimizer"]) == {"sgd", "adam"}


def test_auto_in_a_spec_resolves_to_the_range_test() -> None:
    spec = parse_spec({"name": "s", "task": "linreg", "space": {"lr": "auto"}})
    assert spec.space.lr == "auto"
    with pytest.raises(SpecError) as e:
        resolved(spec, None)
    assert e.value.field == "space.lr"
    with pytest.raises(SpecError):  # sampling needs the resolved range
        SearchSpace(spec.space).choose(_Always())
    bounds = LrBounds(1e-3, 0.5)
    ready = resolved(spec, bounds)
    assert (ready.space.lr.low, ready.space.lr.high) == (1e-3, 0.5)  # type: ignore[union-attr]
    assert spec.space.lr == "auto"  # the submitted spec is unchanged
    # stored trials decode without the range
    config = SearchSpace(spec.space).decode({"schedule": "constant", "lr": 0.02,
                                             "optimizer": "sgd"})
    assert config.optimizer.lr == 0.02


def test_other_strings_are_rejected_naming_the_field() -> None:
    with pytest.raises(SpecError) as e:
        parse_spec({"name": "s", "task": "linreg", "space": {"lr": "automatic"}})
    assert e.value.field.startswith("space.lr")


class _Always:
    def categorical(self, name: str, choices: list) -> object:
        return choices[0]

    def float(self, name: str, low: float, high: float, log: bool) -> float:
        return low

    def int(self, name: str, low: int, high: int, log: bool) -> int:
        return low
