import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from lrtune import optuna_internals as internals
from lrtune.spec import StudySpec
from lrtune.store import CANCELLED, DONE, RUNNING, Conflict, NotFound
from tests.conftest import MakeStore, age_trials


def run_all(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def spec(name: str = "s", n: int = 4) -> StudySpec:
    return StudySpec(name=name, task="linreg", epochs=2, n_trials=n)


def test_migrations_use_their_own_version_table(make_store: MakeStore) -> None:
    import sqlalchemy as sa

    store = make_store()
    make_store()  # idempotent
    tables = set(sa.inspect(store.engine).get_table_names())
    assert {"lrtune_studies", "lrtune_tokens", "lrtune_alembic_version", "trials",
            "alembic_version"} <= tables


def test_create_list_cancel_delete(make_store: MakeStore) -> None:
    store = make_store()
    a = store.create_study(spec("a"), "owner1")
    store.create_study(spec("b"), "owner2")
    with pytest.raises(Conflict):
        store.create_study(spec("a"), "owner1")
    items, total = store.list_studies(limit=1, offset=1)
    assert total == 2 and [r.name for r in items] == ["b"]
    assert store.cancel(a.id).status == CANCELLED
    assert store.claim({a.id}) is None
    assert [r.name for r in store.list_studies(RUNNING)[0]] == ["b"]
    store.delete(a.id)
    with pytest.raises(NotFound):
        store.get_study(a.id)


def test_claims_never_exceed_the_budget(make_store: MakeStore) -> None:
    store = make_store()
    record = store.create_study(spec(n=5), "me")
    claims = []
    lock = threading.Lock()

    def grab() -> None:
        local = make_store()
        while (claim := local.claim()) is not None:
            with lock:
                claims.append(claim)

    run_all([threading.Thread(target=grab) for _ in range(3)])
    assert len(claims) == 5
    assert sorted(c.trial.number for c in claims) == list(range(5))
    for c in claims:
        store.finish(c, TrialState.COMPLETE, 1.0)
    assert store.get_study(record.id).status == DONE
    assert store.claim() is None


def test_failed_trials_free_their_slot(make_store: MakeStore) -> None:
    store = make_store()
    record = store.create_study(spec(n=2), "me")
    first = store.claim()
    assert first is not None
    store.finish(first, TrialState.FAIL, None)
    numbers = []
    while (c := store.claim()) is not None:
        numbers.append(c.trial.number)
        store.finish(c, TrialState.COMPLETE, 0.5)
    assert numbers == [1, 2]
    assert store.trial_counts(record)["COMPLETE"] == 2


def test_lost_trials_are_failed_and_requeued_once(make_store: MakeStore) -> None:
    store = make_store(max_retries=1)
    record = store.create_study(spec(n=1), "me")
    claim = store.claim()
    assert claim is not None
    claim.trial.suggest_float("x", 0, 1)
    age_trials(store)  # no heartbeat for an hour: past any grace
    assert store.reap(record) == 1  # as a claimer does, once per heartbeat interval
    retry = store.claim()
    assert retry is not None and retry.trial.number == 1
    lost = store.optuna_storage.get_trial(claim.trial_id)
    assert lost.state == TrialState.FAIL and lost.user_attrs["reason"].startswith("lost")
    assert retry.trial.params == {"x": claim.trial.params["x"]}
    assert retry.trial.user_attrs["retry_of"] == 0
    age_trials(store)  # lost again: over the retry limit, the failure stays final
    assert store.reap(record) == 1
    fresh = store.claim()
    assert fresh is not None and fresh.trial.number == 2 and "x" not in fresh.trial.params
    store.finish(fresh, TrialState.COMPLETE, 1.0)
    counts = store.trial_counts(record)
    assert counts == {**counts, "COMPLETE": 1, "FAIL": 2, "WAITING": 0, "RUNNING": 0}


def test_a_packs_heartbeat_keeps_every_trial_alive(make_store: MakeStore) -> None:
    """One write beats the whole pack (first beat inserts, later ones update), on the
    database's clock: past the grace, the beaten trials are not lost, the silent one is."""
    from lrtune import optuna_internals as internals
    from lrtune.optuna_internals import HEARTBEATS
    from lrtune.store.trials import ID_BATCH

    store = make_store()
    record = store.create_study(StudySpec(name="hb", task="linreg", epochs=2,
                                          n_trials=ID_BATCH + 3, pack=ID_BATCH + 3), "me")
    claims = store.claim_pack(ID_BATCH + 3)
    beaten = [c.trial_id for c in claims[1:]]  # more than one IN list
    store.record_heartbeats(beaten)
    with store.engine.connect() as conn:
        first = {tid: beat for tid, beat in conn.execute(
            sa.select(HEARTBEATS.c.trial_id, HEARTBEATS.c.heartbeat))}
    assert set(first) == set(beaten)
    age_trials(store)  # past the grace for every trial, beaten or not
    with store.engine.connect() as conn:
        aged = dict(conn.execute(sa.select(HEARTBEATS.c.trial_id, HEARTBEATS.c.heartbeat)).all())
    store.record_heartbeats(beaten)  # the pack's heartbeat comes: all but one alive again
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(HEARTBEATS.c.trial_id, HEARTBEATS.c.heartbeat)).all()
    assert len(rows) == len(beaten) and all(beat > aged[tid] for tid, beat in rows)
    study_id = store.optuna_study_id(record)
    assert store.reap(record) == 1
    states = {internals.trial_id(t): t.state for t in store.optuna_storage.get_all_trials(study_id)}
    assert states[claims[0].trial_id] == TrialState.FAIL
    assert all(states[tid] == TrialState.RUNNING for tid in beaten)


def test_hand_back_requeues_the_same_params(make_store: MakeStore) -> None:
    store = make_store()
    store.create_study(spec(n=1), "me")
    claim = store.claim()
    assert claim is not None
    claim.trial.suggest_float("x", 0, 1)
    store.hand_back([claim], "handed back: test")
    again = store.claim()
    assert again is not None and again.trial.params == claim.trial.params
    assert store.claim() is None


def test_tokens_are_stored_hashed(make_store: MakeStore) -> None:
    import sqlalchemy as sa

    store = make_store(api_tokens="envtoken")
    token = store.create_token("alice")
    with store.engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT token_hash FROM lrtune_tokens")).scalar_one()
    assert token not in stored and len(stored) == 64
    assert store.token_owner(token) is not None
    assert store.token_owner("envtoken") is not None
    assert store.token_owner("nope") is None
    assert store.token_owner(token) != store.token_owner("envtoken")


def test_optuna_sees_the_study(make_store: MakeStore) -> None:
    store = make_store()
    store.create_study(spec("visible"), "me")
    names = [s.study_name for s in optuna.get_all_study_summaries(store.optuna_storage)]
    assert names == ["visible"]


def test_requeued_losses_do_not_count_as_failures(make_store: MakeStore) -> None:
    """A kill storm re-runs lost trials; only failures that stay failed can fail the study."""
    store = make_store(max_failures=0, max_retries=10)
    record = store.create_study(spec(n=1), "me")
    for _ in range(3):  # lost three times, each time re-queued
        claim = store.claim()
        assert claim is not None
        store.hand_back([claim], "handed back: test")
    assert store.requeued(record) == 3 and store.trial_counts(record)["FAIL"] == 3
    claim = store.claim()
    assert claim is not None and store.get_study(record.id).status == "running"
    store.finish(claim, TrialState.FAIL, None)  # a real failure: over n_trials + 0 allowed
    assert store.claim() is None
    assert store.get_study(record.id).status == "failed"


def test_a_deleted_studys_id_is_never_reused(make_store: MakeStore) -> None:
    """Workers cache a study's Optuna objects by id: a new study must not inherit one."""
    store = make_store()
    first = store.create_study(spec("a", n=1), "me")
    worker = make_store()  # a worker that knows the first study
    assert worker.optuna_study(first).study_name == "a"
    store.delete(first.id)
    second = store.create_study(spec("b", n=1), "me")
    assert second.id != first.id
    claim = worker.claim()
    assert claim is not None and claim.record.name == "b"
    assert claim.study.study_name == "b"


def test_upgrading_a_database_keeps_its_studies(make_store: MakeStore) -> None:
    """A database made by an older lrtune (revision 0002) upgrades with its rows intact."""
    from pathlib import Path

    from alembic import command
    from alembic.config import Config

    import lrtune.store

    store = make_store()
    record = store.create_study(spec("old", n=1), "me")
    cfg = Config()
    cfg.set_main_option("script_location",
                        str(Path(lrtune.store.__file__).parents[1] / "migrations"))
    with store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0002")
    upgraded = make_store()  # migrates to head again
    again = upgraded.get_study(record.id)
    assert (again.name, again.spec, again.created_at) == ("old", record.spec, record.created_at)
    assert upgraded.create_study(spec("new", n=1), "me").id > record.id


def test_seeded_workers_do_not_repeat_each_others_draws(make_store: MakeStore) -> None:
    """Two workers on one seeded study draw different values; one worker replays exactly."""
    def seeded(name: str) -> StudySpec:
        return StudySpec(name=name, task="linreg", epochs=2, n_trials=4,
                         sampler={"name": "random", "seed": 7})

    first, second = make_store(), make_store()
    first.create_study(seeded("two"), "me")
    a, b = first.claim(), second.claim()
    assert a is not None and b is not None
    assert a.trial.suggest_float("x", 0, 1) != b.trial.suggest_float("x", 0, 1)
    replays = []
    for name in ("once", "again"):
        store = make_store()
        store.create_study(seeded(name), "me")
        drawn = []
        while (claim := store.claim({store.list_studies()[0][-1].id})) is not None:
            drawn.append(claim.trial.suggest_float("x", 0, 1))
            store.finish(claim, TrialState.COMPLETE, 0.5)
        replays.append(drawn)
    assert replays[0] == replays[1] and len(set(replays[0])) == 4


def test_two_databases_read_in_one_process_keep_their_own_specs(tmp_path: Path) -> None:
    """Specs are kept per process by study id and creation time: the same id in another
    database (a test's, a benchmark's) is another study."""
    from lrtune.settings import Settings
    from lrtune.store import Store

    stores = [Store(Settings(database_url=f"sqlite:///{tmp_path / f'{i}.db'}"))
              for i in range(2)]
    for epochs, store in zip((2, 7), stores, strict=True):
        assert store.create_study(StudySpec(name="same", task="linreg", epochs=epochs),
                                  "me").id == 1
    for epochs, store in zip((2, 7), stores, strict=True):
        assert store.get_study(1).spec.epochs == epochs
        (record, _), = store.study_page(None, 10, 0)[0]
        assert record.spec.epochs == epochs


def test_delete_waits_for_a_worker_writing_a_trial(make_store: MakeStore) -> None:
    """A worker's transaction adding a row to a running trial while its study is deleted: the
    delete waits for it, then removes that row too (on PostgreSQL it used to fail with a
    foreign-key violation: the row came between its deletes)."""
    store = make_store()
    record = store.create_study(StudySpec(name="busy", task="linreg", n_trials=3), "me")
    trial_id = store.optuna_storage.create_new_trial(store.optuna_study_id(record))
    worker = make_store()
    deleted: list[BaseException | None] = []

    def delete() -> None:
        try:
            store.delete(record.id)
            deleted.append(None)
        except BaseException as error:  # noqa: B036 - reported by the assertion below
            deleted.append(error)

    with worker.engine.connect() as conn:
        conn.execute(internals.PARAMS.insert().values(
            trial_id=trial_id, param_name="lr", param_value=0.1,
            distribution_json='{"name": "FloatDistribution", "attributes": '
                              '{"log": true, "step": null, "low": 0.01, "high": 1.0}}'))
        deleter = threading.Thread(target=delete)
        deleter.start()
        deleter.join(timeout=1.0)  # the delete now waits for this transaction
        conn.commit()
    deleter.join(timeout=60)
    assert deleted == [None]
    with worker.engine.connect() as conn:
        for table in (internals.PARAMS, internals.TRIALS):
            assert conn.execute(sa.select(sa.func.count()).select_from(table)).scalar() == 0
    with pytest.raises(NotFound):
        store.get_study(record.id)


def test_env_tokens_first_seen_at_once_each_get_their_own_principal(
        make_store: MakeStore) -> None:
    """Settings' tokens seen for the first time by requests at once: none is refused, and no
    two share a principal (they would read and cancel each other's studies)."""
    secrets_ = [f"env-secret-{i}-{'x' * 24}" for i in range(6)]
    store = make_store(api_tokens=",".join(secrets_[:3]), worker_tokens=",".join(secrets_[3:]))
    barrier = threading.Barrier(12)
    seen: list[object] = []

    def first_sight(secret: str) -> None:
        barrier.wait()
        seen.append((secret, store.tokens.principal(secret)))

    run_all([threading.Thread(target=first_sight, args=(s,)) for s in secrets_ * 2])
    by_secret: dict[str, set[str]] = {}
    for secret, principal in seen:  # type: ignore[misc]
        assert principal is not None, secret
        by_secret.setdefault(secret, set()).add(principal.public_id)
    assert all(len(ids) == 1 for ids in by_secret.values()), by_secret
    assert len(set().union(*by_secret.values())) == 6, by_secret


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_replicas_starting_together_on_an_empty_database(db_url: str, tmp_path: Path) -> None:
    """API replicas created at the same moment on an empty PostgreSQL database all start
    (creating Optuna's and lrtune's schema once, not racing in CREATE TYPE), and none opens
    a connection beyond its pools while it starts, even with the smallest pools."""
    go, done = tmp_path / "go", tmp_path / "done"
    script = (
        "import pathlib, sys, time\n"
        "from lrtune.settings import Settings\n"
        "from lrtune.store import Store\n"
        "while not pathlib.Path(sys.argv[2]).exists(): time.sleep(0.005)\n"
        "Store(Settings(database_url=sys.argv[1], db_pool_size=2, db_max_overflow=0,\n"
        "                db_pool_timeout=60)).open_pools()\n"
        "pathlib.Path(sys.argv[4]).touch()\n"
        "while not pathlib.Path(sys.argv[3]).exists(): time.sleep(0.005)\n")
    procs = [subprocess.Popen([sys.executable, "-c", script,
                               f"{db_url}?application_name=replica{i}", str(go), str(done),
                               str(tmp_path / f"ready{i}")],
                              stderr=subprocess.PIPE, text=True) for i in range(6)]
    peaks: dict[str, int] = {}
    watcher = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    with watcher.connect() as conn:
        time.sleep(4)  # every process imported and polling
        go.touch()
        deadline = time.monotonic() + 120
        settled: float | None = None  # until half a second after all replicas opened pools
        while settled is None or time.monotonic() < settled:
            if settled is None and len(list(tmp_path.glob("ready*"))) == 6:
                settled = time.monotonic() + 0.5
            rows = conn.execute(sa.text(
                "SELECT application_name, count(*) FROM pg_stat_activity "
                "WHERE application_name LIKE 'replica%' GROUP BY application_name")).all()
            conn.rollback()  # a fresh snapshot of pg_stat_activity each time
            for name, count in rows:
                peaks[name] = max(peaks.get(name, 0), count)
            if time.monotonic() > deadline:
                break
    watcher.dispose()
    done.touch()
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, "\n".join(errors)
    assert peaks == {f"replica{i}": 4 for i in range(6)}  # lrtune's pool and Optuna's, 2 each


def test_processes_starting_together_on_a_new_sqlite_file(tmp_path: Path) -> None:
    """`lrtune serve &` then `lrtune token create` at once on a new SQLite file (the README's
    own-code section does): both start, one creating the schema while the other waits (they
    raced in Optuna's CREATE TABLE: "table trial_heartbeats already exists")."""
    go, url = tmp_path / "go", f"sqlite:///{tmp_path / 'lrtune.db'}"
    script = (
        "import pathlib, sys, time\n"
        "from lrtune.settings import Settings\n"
        "from lrtune.store import Store\n"
        "while not pathlib.Path(sys.argv[2]).exists(): time.sleep(0.002)\n"
        "Store(Settings(database_url=sys.argv[1]))\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, url, str(go)],
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    time.sleep(4)  # every process imported and polling
    go.touch()
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(errors)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_claimers_waiting_on_a_study_hold_no_connection(make_store: MakeStore) -> None:
    """More threads of one process claiming packs of one study than its pool has connections:
    the waiting ones hold none, so the claimer holding the study's lock gets the connection
    it needs to create the pack's trials (no wait for the pool, no DatabaseUnavailable)."""
    store = make_store(db_pool_size=2, db_max_overflow=0, db_pool_timeout=3)
    store.create_study(spec(n=48), "me")
    taken: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def claim_packs() -> None:
        barrier.wait()
        try:
            while claims := store.claims.claim_pack(want=3):
                taken.extend(c.trial.number for c in claims)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    run_all([threading.Thread(target=claim_packs) for _ in range(8)])
    assert not errors, errors
    assert sorted(taken) == list(range(48))


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_servers_connections_are_its_pool_sizes_from_the_start(make_store: MakeStore) -> None:
    store = make_store(db_pool_size=3, db_max_overflow=0)
    store.open_pools()
    with store.transaction() as conn:  # one of the pool's own
        others = conn.execute(sa.text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()")).scalar_one()
    assert others + 1 == 2 * 3  # lrtune's engine and Optuna's, 3 kept each
