import json
import typing
from typing import Any

import optuna
import pytest

from lrtune import optuna_internals as internals
from lrtune.space import SearchSpace
from lrtune.spec import SamplerSpec, SpaceSpec
from lrtune.study import make_sampler
from lrtune.tpe import LazyGroupTPESampler

SPACE = SearchSpace(SpaceSpec())  # every family and optimizer: 17 parameter groups


def study_after(n: int, seed: int = 0) -> optuna.Study:
    """A study of lrtune's sampler with ``n`` finished trials of the whole space."""
    source = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    study = optuna.create_study(sampler=make_sampler(SamplerSpec(name="tpe", seed=seed)))
    for i in range(n):
        trial = source.ask()
        SPACE.sample(trial)
        study.add_trial(optuna.trial.create_trial(params=trial.params,
                                                  distributions=trial.distributions,
                                                  value=float((i * 7919) % 101)))
    return study


def record_draws(sampler: LazyGroupTPESampler) -> list[dict[str, Any]]:
    draws: list[dict[str, Any]] = []
    inner = sampler._sample_relative

    def sample_relative(*args: Any) -> dict[str, Any]:
        drawn = inner(*args)
        draws.append(drawn)
        return drawn

    sampler._sample_relative = sample_relative  # type: ignore[method-assign]
    return draws


def shared(study: optuna.Study, trial: optuna.Trial) -> dict[str, Any]:
    attrs = internals.storage_of(study).get_trial(internals.trial_id(trial)).system_attrs
    chunks = sorted((k for k in attrs if k.startswith("tpe:relative_params:")),
                    key=lambda k: int(k.rsplit(":", 1)[1]))
    return json.loads("".join(attrs[k] for k in chunks)) if chunks else {}


def test_lrtunes_tpe_is_the_lazy_grouped_one() -> None:
    sampler = make_sampler(SamplerSpec(name="tpe", seed=0))
    assert isinstance(sampler, LazyGroupTPESampler)
    assert sampler._multivariate and sampler._group and sampler._constant_liar


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_trial_draws_only_the_groups_it_uses_once_each(seed: int) -> None:
    study = study_after(30, seed)
    sampler = study.sampler
    assert isinstance(sampler, LazyGroupTPESampler)
    draws = record_draws(sampler)
    trial = study.ask()
    SPACE.sample(trial)
    groups = [set(g) for g in sampler._search_space_group.search_spaces]
    assert len(groups) >= 10  # the families and optimizers the history has seen
    used = [g for g in groups if g & set(trial.params)]
    assert sorted(map(sorted, draws)) == sorted(map(sorted, used))  # each once
    assert len(used) <= 3  # the main group, the family's, the optimizer's
    drawn = {k: v for d in draws for k, v in d.items()}
    assert drawn == {k: trial.params[k] for k in drawn}  # one joint draw per group, as drawn
    assert set(drawn) == {k for g in used for k in g}
    assert shared(study, trial) == {}  # no note: the stored params hold every group drawn


def test_before_the_start_up_trials_it_samples_at_random() -> None:
    study = study_after(3)
    draws = record_draws(study.sampler)  # type: ignore[arg-type]
    trial = study.ask()
    config = SPACE.sample(trial)
    assert SPACE.decode(trial.params) == config
    assert all(d == {} for d in draws) and shared(study, trial) == {}


def test_the_liar_sees_what_a_running_trial_drew() -> None:
    study = study_after(30)
    sampler = study.sampler
    assert isinstance(sampler, LazyGroupTPESampler)
    first = study.ask()
    SPACE.sample(first)  # stays RUNNING while the next trial samples
    running = internals.storage_of(study).get_trial(internals.trial_id(first))
    assert sampler._get_params(running, study) == first.params  # what the liar reads
    draws = record_draws(sampler)
    second = study.ask()
    SPACE.sample(second)
    assert draws and all(d for d in draws)


def test_it_still_searches() -> None:
    """Over lrtune's whole space, TPE's suggestions after the start-up trials lean to where
    the objective is low: the base LR near 1e-2 with the cosine family."""
    import math

    def objective(trial: optuna.Trial) -> float:
        config = SPACE.sample(trial)
        return abs(math.log10(config.optimizer.lr) + 2) + (config.schedule.family != "cosine")

    study = optuna.create_study(sampler=make_sampler(SamplerSpec(name="tpe", seed=3)))
    study.optimize(objective, n_trials=60)
    late = [t.value for t in study.trials[30:]]
    early = [t.value for t in study.trials[:10]]  # random start-up trials
    assert sum(late) / len(late) < 0.6 * sum(early) / len(early)


def test_the_kept_groups_are_optunas_as_trials_finish() -> None:
    from optuna.search_space.group_decomposed import _GroupDecomposedSearchSpace

    study = study_after(4)  # few families seen so far: the groups grow as more finish
    sampler = study.sampler
    assert isinstance(sampler, LazyGroupTPESampler)
    for i in range(40):
        trial = study.ask()
        SPACE.sample(trial)
        if i % 5 == 0:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, float(i % 7))
        frozen = internals.storage_of(study).get_trial(internals.trial_id(trial))
        kept = sampler.infer_relative_search_space(study, frozen)
        optunas = _GroupDecomposedSearchSpace(include_pruned=True).calculate(study)
        assert sorted(map(sorted, sampler._search_space_group.search_spaces)) == \
            sorted(map(sorted, optunas.search_spaces))
        assert kept == {n: d for g in optunas.search_spaces for n, d in g.items()
                        if not d.single()}


def test_a_reseeded_sampler_starts_from_the_groups_kept() -> None:
    """A seeded study gets a new sampler at every claim (Store._reseed): it must not recompute
    the groups from every finished trial each time."""
    study = study_after(30)
    old = study.sampler
    assert isinstance(old, LazyGroupTPESampler)
    first = study.ask()
    SPACE.sample(first)
    study.tell(first, 1.0)
    assert len(old._grouped) == 30  # those finished when the trial sampled
    new = make_sampler(SamplerSpec(name="tpe", seed=7), previous=old)
    assert isinstance(new, LazyGroupTPESampler)
    assert new._groups is old._groups and new._grouped is old._grouped
    study.sampler = new
    trial = study.ask()
    SPACE.sample(trial)
    assert len(new._grouped) == 31 and {"lr", "optimizer", "schedule"} <= set(new._relative_space)
    assert isinstance(make_sampler(SamplerSpec(name="random"), previous=old),
                      optuna.samplers.RandomSampler)


@pytest.mark.parametrize("name", typing.get_args(SamplerSpec.model_fields["name"].annotation))
def test_every_sampler_a_spec_may_name_samples_the_whole_space(name: str) -> None:
    study = optuna.create_study(sampler=make_sampler(SamplerSpec(name=name, seed=1)))
    for i in range(12):  # past every sampler's start-up trials
        trial = study.ask()
        SPACE.sample(trial)
        study.tell(trial, float((i * 7919) % 101))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
