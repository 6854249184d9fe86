import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lrtune.errors import SpecError
from lrtune.schedules import FAMILIES, WARMUP, Param, Schedule, describe_catalogue, formulas
from tests.grid import METRICS

DESIGN_FAMILIES = ["constant", "step", "multistep", "exponential", "inverse_time", "polynomial",
                   "cosine", "cosine_restarts", "cyclic", "onecycle", "wsd", "plateau", "random"]


def test_catalogue_has_every_family_of_the_design() -> None:
    assert list(FAMILIES) == DESIGN_FAMILIES
    described = describe_catalogue()
    assert {m["name"] for m in described["modifiers"]} == {"warmup", "clip"}
    for fam in described["families"]:
        assert fam["formula"] and all(p["unit"] is not None for p in fam["params"])


def test_textbook_values() -> None:
    step = Schedule.build("step", {"step_size": 0.3, "gamma": 0.1})
    assert step.lr(0, 100, 10, 1.0) == 1.0
    assert step.lr(30, 100, 10, 1.0) == pytest.approx(0.1)
    assert step.lr(60, 100, 10, 1.0) == pytest.approx(0.01)
    multi = Schedule.build("multistep")  # milestones at 30/60/90 % of training
    assert [multi.lr(t, 100, 10, 1.0) for t in (29, 30, 60, 90)] == pytest.approx(
        [1.0, 0.1, 0.01, 0.001])
    inv = Schedule.build("inverse_time", {"decay_rate": 0.5})
    assert inv.lr(20, 100, 10, 1.0) == pytest.approx(1 / (1 + 0.5 * 2))
    cos = Schedule.build("cosine", {"eta_min_ratio": 0.0})
    assert cos.lr(50, 100, 10, 1.0) == pytest.approx(0.5)


def test_fractions_transfer_across_horizons() -> None:
    s = Schedule.build("onecycle", {"pct_start": 0.25})
    short = s.curve(40, 10, 1.0)
    long = s.curve(400, 10, 1.0)
    assert short.index(max(short)) / 40 == pytest.approx(long.index(max(long)) / 400, abs=0.03)


def test_plateau_reacts_to_the_metric() -> None:
    s = Schedule.build("plateau", {"patience": 1, "factor": 0.5, "cooldown": 0})
    improving = [1.0 - 0.1 * i for i in range(8)]
    flat = [1.0] * 8
    assert s.lr(79, 80, 10, 1.0, improving) == 1.0
    assert s.lr(79, 80, 10, 1.0, flat) < 0.2


def test_random_is_seeded() -> None:
    a = Schedule.build("random", {"seed": 3}).curve(50, 5, 1.0)
    b = Schedule.build("random", {"seed": 3}).curve(50, 5, 1.0)
    c = Schedule.build("random", {"seed": 4}).curve(50, 5, 1.0)
    assert a == b and a != c


@pytest.mark.parametrize("family,params,field", [
    ("step", {"gamma": 0.0}, "step.gamma"),
    ("step", {"gamma": float("nan")}, "step.gamma"),
    ("step", {"gamma": "x"}, "step.gamma"),
    ("step", {"nope": 1}, "step.nope"),
    ("cosine_restarts", {"T_mult": 1.5}, "cosine_restarts.T_mult"),
    ("cyclic", {"mode": "sine"}, "cyclic.mode"),
    ("wsd", {"warmup": 0.5, "decay": 0.5001}, "wsd.decay"),
    ("random", {"low": 2.0, "high": 1.5}, "random.low"),
])
def test_invalid_parameters_name_the_parameter(family: str, params: dict, field: str) -> None:
    with pytest.raises(SpecError) as info:
        Schedule.build(family, params)
    assert info.value.field == field
    assert field in str(info.value)


def test_unknown_family_and_bad_modifiers() -> None:
    with pytest.raises(SpecError, match="unknown schedule family"):
        Schedule.build("sawtooth")
    with pytest.raises(SpecError) as info:
        Schedule.build("cosine", warmup={"start_factor": 0})
    assert info.value.field == "warmup.start_factor"
    with pytest.raises(SpecError) as info:
        Schedule.build("cosine", clip={"min_lr": 0.5, "max_lr": 0.1})
    assert info.value.field == "clip.min_lr"
    with pytest.raises(SpecError) as info:
        Schedule.build("cosine", warmup={"fraction": 0.9}).curve(1, 1, 1.0)
    assert info.value.field == "warmup.fraction"


def _values(p: Param) -> st.SearchStrategy:
    if p.kind == "categorical":
        return st.sampled_from(p.choices)
    assert p.low is not None and p.high is not None
    if p.kind == "int":
        return st.integers(int(p.low), int(p.high))
    return st.floats(p.low, p.high, allow_nan=False)


@st.composite
def schedules(draw: st.DrawFn) -> Schedule:
    name = draw(st.sampled_from(list(FAMILIES)))
    params = {p.name: draw(_values(p)) for p in FAMILIES[name].params.params if p.searched}
    if name == "wsd" and params["warmup"] + params["decay"] > 1:
        params["decay"] = 1 - params["warmup"]
    warmup = ({p.name: draw(_values(p)) for p in WARMUP.params}
              if draw(st.booleans()) else None)
    return Schedule.build(name, params, warmup)


@settings(max_examples=300, deadline=None)
@given(schedule=schedules(), epochs=st.integers(2, 30), spe=st.integers(1, 20),
       lr0=st.floats(1e-5, 10.0))
def test_lrs_are_finite_and_positive(schedule: Schedule, epochs: int, spe: int,
                                     lr0: float) -> None:
    T = epochs * spe
    try:
        lrs = schedule.curve(T, spe, lr0, METRICS)
    except SpecError as e:  # run too short for a phase: must say which parameter
        assert e.field in ("warmup.fraction", "onecycle.pct_start")
        return
    assert len(lrs) == T
    assert all(math.isfinite(v) and v > 0 for v in lrs)
    if schedule.warmup is not None:
        assert lrs[0] == pytest.approx(lr0 * schedule.warmup["start_factor"] * (
            1.0 if not FAMILIES[schedule.family].metric_driven else 1.0), rel=1e-9)


@settings(max_examples=200, deadline=None)
@given(schedule=schedules(), low=st.floats(1e-4, 0.05), span=st.floats(1.0, 100.0))
def test_clip_bounds_hold(schedule: Schedule, low: float, span: float) -> None:
    clipped = Schedule.build(schedule.family, schedule.params, schedule.warmup,
                             {"min_lr": low, "max_lr": low * span})
    try:
        lrs = clipped.curve(100, 10, 0.1, METRICS)
    except SpecError:
        return
    assert all(low <= v <= low * span for v in lrs)


@settings(max_examples=100, deadline=None)
@given(name=st.sampled_from(list(FAMILIES)), data=st.data())
def test_out_of_bounds_values_raise_naming_the_parameter(name: str, data: st.DataObject) -> None:
    numeric = [p for p in FAMILIES[name].params.params if p.kind != "categorical" and
               (p.min is not None or p.max is not None)]
    if not numeric:
        return
    p = data.draw(st.sampled_from(numeric))
    bad = (p.min - 1.0) if p.min is not None else (p.max + 1.0)  # type: ignore[operator]
    with pytest.raises(SpecError) as info:
        Schedule.build(name, {p.name: bad})
    assert info.value.field == f"{name}.{p.name}"


def test_multistep_milestones_default_to_thirty_sixty_ninety() -> None:
    assert formulas.multistep_milestones(100, 0.3, 0.3) == [30, 60, 90]
