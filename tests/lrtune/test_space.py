import optuna
import pytest

from lrtune.errors import SpecError
from lrtune.space import SearchSpace
from lrtune.spec import SpaceSpec


def _sample(space: SearchSpace, n: int = 30) -> list[optuna.trial.FrozenTrial]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(n):
        trial = study.ask()
        config = space.sample(trial)
        assert space.decode(trial.params) == config
        study.tell(trial, 0.0)
    return study.trials


def test_names_are_stable_and_conditional_on_family() -> None:
    trials = _sample(SearchSpace(SpaceSpec(families=["step", "cosine"], warmup="search")))
    for t in trials:
        fam = t.params["schedule"]
        assert {"schedule", "lr", "optimizer", "warmup"} <= set(t.params)
        other = "cosine" if fam == "step" else "step"
        assert not any(k.startswith(other + ".") for k in t.params)
        assert any(k.startswith(fam + ".") for k in t.params)
        assert ("warmup.fraction" in t.params) == t.params["warmup"]


def test_overrides_and_fixed_values_are_used() -> None:
    spec = SpaceSpec(families=["step"], optimizers=["momentum"], lr={"low": 0.01, "high": 0.02},
                     ranges={"step.gamma": {"low": 0.3, "high": 0.4}},
                     fixed={"momentum.nesterov": True, "step.step_size": 0.25})
    for t in _sample(SearchSpace(spec)):
        assert 0.3 <= t.params["step.gamma"] <= 0.4
        assert 0.01 <= t.params["lr"] <= 0.02
        assert "step.step_size" not in t.params and "momentum.nesterov" not in t.params
    config = SearchSpace(spec).decode(t.params)
    assert config.schedule.params["step_size"] == 0.25
    assert config.optimizer.params == {"momentum": t.params["momentum.momentum"],
                                       "nesterov": True}


def test_plateau_mode_follows_the_direction() -> None:
    space = SearchSpace(SpaceSpec(families=["plateau"]), "maximize")
    config = space.decode({"schedule": "plateau", "lr": 0.1, "optimizer": "sgd",
                           "plateau.factor": 0.5, "plateau.patience": 1,
                           "plateau.threshold": 1e-3, "plateau.cooldown": 0})
    assert config.schedule.params["mode"] == "max"


@pytest.mark.parametrize("spec,field", [
    ({"ranges": {"step.nope": {"low": 0.1, "high": 0.2}}}, "space.ranges.step.nope"),
    ({"ranges": {"step.gamma": {"low": 0.1, "high": 2.0}}}, "space.ranges.step.gamma"),
    ({"ranges": {"cyclic.mode": {"low": 0.1, "high": 0.2}}}, "space.ranges.cyclic.mode"),
    ({"fixed": {"step.gamma": -1}}, "space.fixed.step.gamma"),
    ({"fixed": {"schedule": "sawtooth"}}, "space.fixed.schedule"),
])
def test_bad_overrides_name_the_field(spec: dict, field: str) -> None:
    with pytest.raises(SpecError) as info:
        SearchSpace(SpaceSpec.model_validate(spec))
    assert info.value.field == field


@pytest.mark.parametrize("spec", [
    {"families": ["sawtooth"]}, {"optimizers": ["lion"]}, {"lr": {"low": 1.0, "high": 0.1}},
    {"lr": {"low": float("nan"), "high": 0.1}}, {"ranges": {"step.gamma": {"low": 0.5,
                                                                          "high": 0.4}}},
    {"families": []},
])
def test_spec_model_rejects(spec: dict) -> None:
    with pytest.raises(ValueError):
        SpaceSpec.model_validate(spec)
