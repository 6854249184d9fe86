"""Each private Optuna name lrtune relies on, exercised; and no other module touching any.

An Optuna release that renames or changes one of them fails here, not in production."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from lrtune import optuna_internals as internals
from lrtune.store import sqlalchemy_url

ROOT = Path(__file__).resolve().parents[2]
INTERNALS = ROOT / "lrtune" / "optuna_internals.py"


@pytest.fixture
def study(db_url: str) -> optuna.Study:
    storage = optuna.storages.RDBStorage(sqlalchemy_url(db_url))
    return optuna.create_study(storage=storage, study_name="internals")


def test_tables_are_optunas(study: optuna.Study, db_url: str) -> None:
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    trial.report(0.5, 0)
    trial.set_user_attr("u", 1)
    study.tell(trial, 0.25)
    storage = internals.storage_of(study)  # Optuna's cache around the RDB storage
    assert storage.get_trial(internals.trial_id(trial)).value == 0.25
    engine = sa.create_engine(sqlalchemy_url(db_url))
    tid = internals.trial_id(trial)
    with engine.connect() as conn:
        for table in (internals.PARAMS, internals.INTERMEDIATE, internals.VALUES,
                      internals.USER_ATTRS):
            assert conn.execute(sa.select(sa.func.count()).select_from(table).where(
                table.c.trial_id == tid)).scalar_one() == 1, table.name
        row = conn.execute(sa.select(internals.TRIALS).where(
            internals.TRIALS.c.trial_id == tid)).one()
        assert row.state == TrialState.COMPLETE and row.study_id == internals.study_id(study)
        assert conn.execute(sa.select(internals.STUDIES.c.study_name)).scalar_one() == \
            "internals"
        names = {t.name for t in (*internals.TRIAL_TABLES, *internals.STUDY_TABLES)}
    assert names <= set(sa.inspect(engine).get_table_names())
    engine.dispose()


def test_stored_values_round_trip() -> None:
    for value in (0.5, math.inf, -math.inf):
        stored, kind = internals.stored_intermediate(value)
        assert internals.intermediate_from_stored(stored, kind) == value
    assert math.isnan(internals.intermediate_from_stored(*internals.stored_intermediate(
        math.nan)))
    stored, _ = internals.stored_value(math.inf)
    assert stored is None  # an infinite value is stored as a kind, not a number
    assert internals.stored_value(0.25)[0] == 0.25


def test_metric_names_attr_names_the_value_axis(study: optuna.Study) -> None:
    study.set_metric_names(["val_loss"])
    attrs = internals.storage_of(study).get_study_system_attrs(internals.study_id(study))
    assert attrs[internals.METRIC_NAMES_ATTR] == ["val_loss"]


def test_ids_and_new_trial(study: optuna.Study) -> None:
    storage = internals.storage_of(study)
    assert internals.study_id(study) == storage.get_study_id_from_name("internals")
    asked = study.ask()
    fresh = internals.new_trial(study)
    assert (asked.number, fresh.number) == (0, 1)
    frozen = storage.get_trial(internals.trial_id(fresh))
    assert frozen.state == TrialState.RUNNING and internals.trial_id(frozen) == \
        internals.trial_id(fresh)


def test_study_view_reads_through_its_own_storage(study: optuna.Study) -> None:
    study.tell(study.ask(), 1.0)
    calls: list[int] = []
    storage = internals.storage_of(study)

    class Counting:
        def __getattr__(self, name: str) -> object:
            return getattr(storage, name)

        def get_all_trials(self, *args: object, **kwargs: object) -> object:
            calls.append(1)
            return storage.get_all_trials(*args, **kwargs)  # type: ignore[arg-type]

    view = internals.study_view(study, Counting())  # type: ignore[arg-type]
    assert [t.number for t in view.trials] == [0] and calls
    assert internals.storage_of(study) is storage  # the original study is untouched


def test_trials_view_filters_what_samplers_read(study: optuna.Study) -> None:
    study.tell(study.ask(), 1.0)
    study.tell(study.ask(), 2.0)
    study.ask()  # running
    view = internals.trials_view(study, lambda trials: trials[1:])
    assert [t.number for t in view._get_trials(deepcopy=False)] == [1, 2]
    assert [t.number for t in view._get_trials(states=(TrialState.COMPLETE,))] == [1]
    assert len(study.trials) == 3  # the study itself reads all


def test_finished_trials(study: optuna.Study) -> None:
    study.tell(study.ask(), 1.0)
    pruned = study.ask()
    pruned.report(2.0, 0)
    study.tell(pruned, state=TrialState.PRUNED)
    study.ask()  # running
    assert [t.state for t in internals.finished_trials(study)] == [TrialState.COMPLETE,
                                                                 TrialState.PRUNED]


def test_read_trials_builds_them_as_optuna_does(study: optuna.Study, db_url: str) -> None:
    """Every field of every state, infinities and NaN included, equal to Optuna's own."""
    made = []
    for value, state in ((0.25, TrialState.COMPLETE), (math.inf, TrialState.COMPLETE),
                         (None, TrialState.PRUNED), (None, TrialState.FAIL),
                         (None, TrialState.RUNNING)):
        trial = study.ask()
        trial.suggest_float("lr", 1e-4, 1.0, log=True)
        trial.suggest_categorical("family", ["cosine", "step"])
        trial.suggest_int("epochs", 1, 9)
        for step, reported in enumerate((1.0, math.nan, -math.inf, 0.5)):
            trial.report(reported, step)
        trial.set_user_attr("config", {"schedule": {"family": "cosine"}})
        study._storage.set_trial_system_attr(internals.trial_id(trial), "rung", 2)
        if state != TrialState.RUNNING:
            study.tell(trial, value, state=state)
        made.append(internals.trial_id(trial))
    storage = optuna.storages.RDBStorage(sqlalchemy_url(db_url))
    engine = sa.create_engine(sqlalchemy_url(db_url))
    with engine.connect() as conn:
        read = internals.read_trials(conn, list(reversed(made)))
        assert internals.read_trials(conn, []) == []
    expected = [storage.get_trial(tid) for tid in made]
    assert [t.number for t in read] == [t.number for t in expected]  # by number
    for got, want in zip(read, expected, strict=True):
        assert {k: v for k, v in vars(got).items() if k != "intermediate_values"} == \
            {k: v for k, v in vars(want).items() if k != "intermediate_values"}
        assert list(got.intermediate_values) == [0, 1, 2, 3]
        assert math.isnan(got.intermediate_values[1])
        assert [got.intermediate_values[s] for s in (0, 2, 3)] == \
            [want.intermediate_values[s] for s in (0, 2, 3)]
    assert read[1].value == math.inf and read[2].state == TrialState.PRUNED


def test_distribution_contains() -> None:
    distribution = FloatDistribution(0.1, 1.0, log=True)
    assert internals.distribution_contains(distribution, 0.5)
    assert not internals.distribution_contains(distribution, 2.0)


def test_tpe_groups_and_a_joint_draw(study: optuna.Study) -> None:
    sampler = optuna.samplers.TPESampler(multivariate=True, group=True, n_startup_trials=2,
                                         seed=0)
    study.sampler = sampler
    for i in range(4):
        trial = study.ask()
        trial.suggest_float("a", 0.0, 1.0)
        trial.suggest_float("b", 0.0, 1.0)
        study.tell(trial, float(i))
    groups = internals.search_space_group()
    for frozen in internals.finished_trials(study):
        groups.add_distributions(frozen.distributions)
    assert [sorted(space) for space in groups.search_spaces] == [["a", "b"]]
    internals.set_tpe_groups(sampler, groups)
    assert internals.tpe_groups(sampler) is groups
    running = internals.storage_of(study).get_trial(internals.trial_id(study.ask()))
    drawn = internals.sample_tpe_group(sampler, study, running, groups.search_spaces[0])
    assert set(drawn) == {"a", "b"} and all(0.0 <= v <= 1.0 for v in drawn.values())


# -- the contract: Optuna's private names stay in lrtune/optuna_internals.py -------------------

def _private_attributes(tree: ast.AST) -> set[str]:
    return {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
            and node.attr.startswith("_") and not node.attr.startswith("__")}


def _defined_on_self(tree: ast.AST) -> set[str]:
    """Private attributes a module sets on ``self`` (its own state) or defines as methods."""
    names = {node.name for node in ast.walk(tree)
             if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, ast.AnnAssign) else []
        for target in targets:
            for part in ast.walk(target):
                if isinstance(part, ast.Attribute) and isinstance(part.value, ast.Name) \
                        and part.value.id == "self":
                    names.add(part.attr)
    return names


def _optuna_private_names() -> set[str]:
    root = Path(optuna.__file__).parent
    names: set[str] = set()
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        names |= {n for n in _defined_on_self(tree) if n.startswith("_")
                  and not n.startswith("__")}
    return names


def test_no_other_module_touches_optunas_private_names() -> None:
    used_here = _private_attributes(ast.parse(INTERNALS.read_text()))
    assert {"_trial_id", "_study_id", "_storage", "_search_space_group"} <= used_here
    optuna_private = _optuna_private_names() | used_here
    offenders = []
    for package in ("lrtune", "service", "worker", "bench"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == INTERNALS:
                continue
            tree = ast.parse(path.read_text())
            own = _defined_on_self(tree)
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("optuna"):
                    private = [a.name for a in node.names if a.name.startswith("_")]
                    if any(p.startswith("_") for p in (node.module or "").split(".")) \
                            or private:
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} imports "
                                         f"{node.module} {private}")
                if isinstance(node, ast.Attribute) and node.attr in optuna_private \
                        and node.attr not in own:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.attr}")
    assert offenders == [], "Optuna's private names belong in lrtune/optuna_internals.py"
