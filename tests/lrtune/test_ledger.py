import optuna
from optuna.trial import TrialState

from lrtune import optuna_internals as internals
from lrtune.ledger import PackLedger
from lrtune.spec import StudySpec
from lrtune.store import Store


def history(store: Store, n: int) -> None:
    """n finished trials reported the usual way: value 1.0 at every step."""
    for _ in range(n):
        claim = store.claim()
        assert claim is not None
        for step in range(3):
            claim.trial.report(1.0, step)
        store.finish(claim, TrialState.COMPLETE, 1.0)


def test_pack_bookkeeping_lands_in_optunas_tables(store: Store) -> None:
    record = store.create_study(StudySpec(name="p", task="linreg", epochs=3, n_trials=10,
                                          pruner={"name": "median"}), "me")
    history(store, 6)
    claims = store.claim_pack(4)
    assert len(claims) == 4 and all(c.last_slot for c in claims)
    ledger = PackLedger(store, claims)
    numbers = [c.trial.number for c in claims]
    verdicts = {}
    for step in range(2):
        for i, number in enumerate(numbers):
            ledger.report(number, step, 0.5 if i % 2 == 0 else 2.0)  # odd trials are worse
        verdicts = {n: ledger.should_prune(n) for n in numbers}
        ledger.flush()
    real = optuna.load_study(study_name="p", storage=store.optuna_storage,
                             pruner=optuna.pruners.MedianPruner(n_startup_trials=5,
                                                                n_warmup_steps=0))
    for i, number in enumerate(numbers):  # same verdict as the pruner on the real study
        frozen = store.optuna_storage.get_trial(claims[i].trial._trial_id)
        assert verdicts[number] == real.pruner.prune(real, frozen) == (i % 2 == 1)
    for i, number in enumerate(numbers):
        ledger.set_user_attr(number, "lr_curve", [0.1, 0.05])
        ledger.finish(number, TrialState.PRUNED if i % 2 else TrialState.COMPLETE,
                      None if i % 2 else 0.5)
    ledger.flush()
    trials = {t.number: t for t in store.optuna_storage.get_all_trials(
        store.optuna_study_id(record))}
    for i, number in enumerate(numbers):
        t = trials[number]
        assert t.state == (TrialState.PRUNED if i % 2 else TrialState.COMPLETE)
        assert t.intermediate_values == {0: 0.5 if i % 2 == 0 else 2.0,
                                         1: 0.5 if i % 2 == 0 else 2.0}
        assert t.user_attrs["lr_curve"] == [0.1, 0.05]
        assert t.datetime_complete is not None
    assert trials[numbers[0]].value == 0.5
    assert store.get_study(record.id).status == "done"
    assert optuna.load_study(study_name="p", storage=store.optuna_storage).best_value == 0.5


def test_a_trial_reaped_meanwhile_is_skipped(store: Store) -> None:
    store.create_study(StudySpec(name="r", task="linreg", epochs=1, n_trials=2), "me")
    claims = store.claim_pack(2)
    ledger = PackLedger(store, claims)
    store.optuna_storage.set_trial_state_values(claims[0].trial_id, TrialState.FAIL)
    ledger.finish(claims[0].trial.number, TrialState.COMPLETE, 1.0)
    ledger.finish(claims[1].trial.number, TrialState.COMPLETE, 2.0)
    ledger.flush()
    states = [t.state for t in store.optuna_storage.get_all_trials(
        store.optuna_study_id(claims[0].record))]
    assert states == [TrialState.FAIL, TrialState.COMPLETE]


def test_a_pack_is_created_at_once_and_its_params_written_with_the_ledger(store: Store) -> None:
    record = store.create_study(StudySpec(name="bulk", task="linreg", epochs=2, n_trials=7,
                                          pruner={"name": "none"}), "me")
    history(store, 1)
    claims = store.claim_pack(6)
    assert [c.trial.number for c in claims] == [1, 2, 3, 4, 5, 6]
    assert all(c.params is claims[0].params for c in claims)
    for c in claims:
        c.trial.suggest_float("lr", 1e-4, 1.0, log=True)
        c.trial.suggest_categorical("schedule", ["cosine", "step"])
    sid = store.optuna_study_id(record)
    stored = {t.number: t for t in store.optuna_storage.get_all_trials(sid)}
    assert all(stored[n].params == {} for n in range(1, 7))  # held in memory so far
    seen = internals.storage_of(claims[0].study).get_all_trials(sid)  # siblings' params
    assert all(set(t.params) == {"lr", "schedule"} for t in seen if t.number > 0)
    ledger = PackLedger(store, claims)
    ledger.flush()
    stored = {t.number: t for t in store.optuna_storage.get_all_trials(sid)}
    for c in claims:
        assert stored[c.trial.number].params == c.trial.params
        assert stored[c.trial.number].state == TrialState.RUNNING
    assert store.claim_pack(4) == []  # the budget of 7 is taken



def test_a_tpe_pack_reads_the_study_once_while_sampling(store: Store) -> None:
    """TPE with a constant liar asks for every trial once per parameter group of every trial
    it samples; a pack reads the study once, sees its siblings live, and writes a sampler's
    notes on its trials with its parameters."""
    from lrtune.space import SearchSpace

    spec = StudySpec(name="tpe", task="linreg", epochs=2, n_trials=24, pruner={"name": "none"},
                     sampler={"name": "tpe", "seed": 0})
    record = store.create_study(spec, "me")
    space = SearchSpace(spec.space)
    for i in range(12):  # past TPE's 10 start-up trials
        claim = store.claim()
        assert claim is not None
        space.sample(claim.trial)
        store.finish(claim, TrialState.COMPLETE, 1.0 + i)
    claims = store.claim_pack(8)
    storage = claims[0].params
    assert storage is not None
    reads = []
    inner_read = storage.inner.get_all_trials
    storage.inner.get_all_trials = lambda *a, **k: reads.append(1) or inner_read(*a, **k)
    for claim in claims:
        space.sample(claim.trial)
    assert len(reads) == 1
    seen = {t.number: t for t in storage.get_all_trials(storage.study_id)}
    assert all(seen[c.trial.number].params == c.trial.params for c in claims)
    sid = store.optuna_study_id(record)
    first = claims[0].trial_id
    storage.set_trial_system_attr(first, "note", 1)  # a sampler's note on a trial (CMA-ES)
    storage.set_trial_system_attr(first, "note", 2)  # set again: the last value is written
    assert "note" not in store.optuna_storage.get_trial(first).system_attrs  # in memory so far
    PackLedger(store, claims).flush()
    for claim in claims:
        stored = store.optuna_storage.get_trial(claim.trial_id)
        assert stored.params == claim.trial.params
        assert not any(k.startswith("tpe:") for k in stored.system_attrs)  # lrtune's TPE: none
    assert store.optuna_storage.get_trial(first).system_attrs["note"] == 2
    storage.get_all_trials(sid)
    assert len(reads) == 2  # sampling over: read afresh


def test_bulk_insert_writes_what_optuna_reads(store: Store) -> None:
    """PostgreSQL takes the COPY path, SQLite the executemany: both must store enum kinds,
    missing values, infinities and JSON as Optuna's own writes would."""
    import json

    from lrtune.store.trials import bulk_insert

    store.create_study(StudySpec(name="b", task="linreg", epochs=3, n_trials=2), "me")
    claim = store.claim()
    assert claim is not None
    trial_id = claim.trial_id
    values = {0: 0.25, 1: float("inf"), 2: float("-inf")}
    rows = []
    for step, value in values.items():
        stored, kind = internals.stored_intermediate(value)
        rows.append({"trial_id": trial_id, "step": step, "intermediate_value": stored,
                     "intermediate_value_type": kind})
    attr = {"text": "tab\there, quote ' and \\ backslash", "list": [1, None, 2.5]}
    with store.engine.begin() as conn:
        bulk_insert(conn, internals.INTERMEDIATE, rows)
        bulk_insert(conn, internals.USER_ATTRS,
                    [{"trial_id": trial_id, "key": "odd", "value_json": json.dumps(attr)}])
        bulk_insert(conn, internals.USER_ATTRS, [])
    trial = store.optuna_storage.get_trial(trial_id)
    assert trial.intermediate_values == values
    assert trial.user_attrs["odd"] == attr
