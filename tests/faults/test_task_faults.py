"""A task that raises, one whose loss is NaN, a simulated out-of-memory: the worker survives."""

from __future__ import annotations

from pathlib import Path

from lrtune.spec import StudySpec
from tests.conftest import CONVERGING_LR, MakeStore, lrtune_env, spawn, stop
from tests.faults.common import PLUGINS, assert_exact_budget, trials, wait_status


def test_task_faults_end_trials_not_the_worker(db_url: str, make_store: MakeStore,
        tmp_path: Path) -> None:
    store = make_store(max_failures=2)
    specs = {name: store.create_study(StudySpec(name=name, task=name, epochs=3, n_trials=3,
                                                pruner={"name": "none"}), "me")
             for name in ("fault-raise", "fault-nan", "fault-oom")}
    env = lrtune_env(db_url, PYTHONPATH=PLUGINS, LRTUNE_MAX_FAILURES="2")
    worker = spawn(["worker"], env, tmp_path / "worker.log")
    try:
        assert wait_status(store, specs["fault-raise"], 120) == "failed"
        assert wait_status(store, specs["fault-oom"], 120) == "failed"
        assert wait_status(store, specs["fault-nan"], 120) == "failed"  # nothing completed
        assert worker.poll() is None  # alive after all of it
        after = store.create_study(StudySpec(name="after", task="linreg", epochs=2, n_trials=3,
                                             space={"lr": CONVERGING_LR}), "me")
        assert wait_status(store, after, 120) == "done"
        assert worker.poll() is None
    finally:
        stop(worker)
        print((tmp_path / "worker.log").read_text()[-3000:])
    raised = trials(store, specs["fault-raise"])
    assert all(t.state.name == "FAIL" for t in raised) and len(raised) == 5
    assert all("task exploded on purpose" in t.user_attrs["reason"] for t in raised)
    assert store.get_study(specs["fault-raise"].id).reason == "5 trials failed"
    oom = trials(store, specs["fault-oom"])
    assert all(t.user_attrs["reason"].startswith("out of memory") for t in oom)
    nan = trials(store, specs["fault-nan"])
    assert [t.state.name for t in nan] == ["PRUNED"] * 3
    assert all(t.user_attrs["reason"] == "diverged" for t in nan)
    assert "every trial diverged" in (store.get_study(specs["fault-nan"].id).reason or "")
    assert_exact_budget(store, specs["fault-nan"])
    assert_exact_budget(store, after)
