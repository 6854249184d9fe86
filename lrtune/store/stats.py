"""Each study's trials per state and its best trial, kept up to date by the database itself.

Triggers on Optuna's tables (``trials``, ``trial_values``, ``studies``) maintain
``lrtune_trial_counts`` and ``lrtune_study_best``, whoever writes the trials: lrtune's claims
and endings, Optuna's own calls inside a claim (``ask`` popping a waiting trial), or plain
Optuna. Reading a page of studies then costs a few indexed lookups per study, however many
trials they hold. The triggers are installed once per database, after Optuna has created its
tables, with the tables' rows counted under a lock so no write falls between.

Best: of the study's COMPLETE trials with a value (objective 0), the one Optuna's
``get_best_trial`` would pick: the lowest value when minimizing (``-inf`` lowest of all), the
highest when maximizing; the earliest of equals.
"""

from __future__ import annotations

import math

import sqlalchemy as sa
from optuna.trial import TrialState

from lrtune import optuna_internals as internals
from lrtune.store.db import Database
from lrtune.tables import study_best, trial_counts

VERSION = "v1"  # in the triggers' names: a new version installs beside and drops the old

# (rank, signed value) of a value: the lower, the better. 0: -inf when minimizing or +inf when
# maximizing; 1: a finite value; 2: the other infinity.
RANK = ("CASE WHEN {vt} = 'FINITE' THEN 1 WHEN ({vt} = 'INF_NEG') = ({d} = 'MINIMIZE') "
        "THEN 0 ELSE 2 END")
SIGNED = "CASE WHEN {d} = 'MINIMIZE' THEN {v} ELSE -{v} END"


def better(v: str, vt: str, cur_v: str, cur_vt: str, d: str) -> str:
    new, cur = RANK.format(vt=vt, d=d), RANK.format(vt=cur_vt, d=d)
    return (f"(({new}) < ({cur}) OR (({new}) = 1 AND ({cur}) = 1 AND "
            f"({SIGNED.format(v=v, d=d)}) < ({SIGNED.format(v=cur_v, d=d)})))")


def _sqlite_consider(trial: str) -> str:
    """SQLite statements that make trial ``trial`` the study's best if it beats it."""
    study = f"(SELECT study_id FROM trials WHERE trial_id = {trial})"
    value = f"(SELECT value FROM trial_values WHERE trial_id = {trial} AND objective = 0)"
    kind = f"(SELECT value_type FROM trial_values WHERE trial_id = {trial} AND objective = 0)"
    direction = f"(SELECT direction FROM study_directions WHERE study_id = {study} " \
                "AND objective = 0)"
    return (f"INSERT OR IGNORE INTO lrtune_study_best (optuna_study_id) VALUES ({study}); "
            f"UPDATE lrtune_study_best SET trial_id = {trial}, "
            f"value = {value}, value_type = {kind} "
            f"WHERE optuna_study_id = {study} AND (trial_id IS NULL OR "
            f"{better(value, kind, 'value', 'value_type', direction)});")


def _count(study: str, state: str, delta: int) -> str:
    return (f"INSERT OR IGNORE INTO lrtune_trial_counts (optuna_study_id, state, n) "
            f"VALUES ({study}, {state}, 0); UPDATE lrtune_trial_counts SET n = n + ({delta}) "
            f"WHERE optuna_study_id = {study} AND state = {state};")


def _sqlite_triggers() -> list[str]:
    complete = "(SELECT state FROM trials WHERE trial_id = NEW.trial_id) = 'COMPLETE'"
    has_value = ("EXISTS (SELECT 1 FROM trial_values WHERE trial_id = NEW.trial_id "
                 "AND objective = 0)")
    name = f"lrtune_{VERSION}"
    return [
        f"CREATE TRIGGER IF NOT EXISTS {name}_trial_insert AFTER INSERT ON trials BEGIN "
        f"{_count('NEW.study_id', 'NEW.state', 1)} END",
        f"CREATE TRIGGER IF NOT EXISTS {name}_trial_state AFTER UPDATE OF state ON trials "
        f"WHEN OLD.state IS NOT NEW.state BEGIN {_count('OLD.study_id', 'OLD.state', -1)} "
        f"{_count('NEW.study_id', 'NEW.state', 1)} END",
        f"CREATE TRIGGER IF NOT EXISTS {name}_trial_delete AFTER DELETE ON trials BEGIN "
        f"{_count('OLD.study_id', 'OLD.state', -1)} END",
        f"CREATE TRIGGER IF NOT EXISTS {name}_study_delete AFTER DELETE ON studies BEGIN "
        "DELETE FROM lrtune_trial_counts WHERE optuna_study_id = OLD.study_id; "
        "DELETE FROM lrtune_study_best WHERE optuna_study_id = OLD.study_id; END",
        f"CREATE TRIGGER IF NOT EXISTS {name}_value AFTER INSERT ON trial_values "
        f"WHEN NEW.objective = 0 AND {complete} BEGIN {_sqlite_consider('NEW.trial_id')} END",
        f"CREATE TRIGGER IF NOT EXISTS {name}_completed AFTER UPDATE OF state ON trials "
        f"WHEN NEW.state = 'COMPLETE' AND OLD.state IS NOT NEW.state AND {has_value} BEGIN "
        f"{_sqlite_consider('NEW.trial_id')} END",
    ]


def _postgresql_triggers() -> list[str]:
    name = f"lrtune_{VERSION}"
    consider = f"""
CREATE OR REPLACE FUNCTION {name}_consider_best(tid integer) RETURNS void AS $$
DECLARE sid integer; st text; v double precision; vt text; d text;
BEGIN
  SELECT t.study_id, t.state::text INTO sid, st FROM trials t WHERE t.trial_id = tid;
  IF st IS DISTINCT FROM 'COMPLETE' THEN RETURN; END IF;
  SELECT tv.value, tv.value_type::text INTO v, vt FROM trial_values tv
   WHERE tv.trial_id = tid AND tv.objective = 0;
  IF NOT FOUND THEN RETURN; END IF;
  SELECT sd.direction::text INTO d FROM study_directions sd
   WHERE sd.study_id = sid AND sd.objective = 0;
  INSERT INTO lrtune_study_best (optuna_study_id) VALUES (sid) ON CONFLICT DO NOTHING;
  UPDATE lrtune_study_best b SET trial_id = tid, value = v, value_type = vt
   WHERE b.optuna_study_id = sid
     AND (b.trial_id IS NULL OR {better('v', 'vt', 'b.value', 'b.value_type', 'd')});
END $$ LANGUAGE plpgsql"""
    counts = f"""
CREATE OR REPLACE FUNCTION {name}_count_trials() RETURNS trigger AS $$
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') THEN
    UPDATE lrtune_trial_counts SET n = n - 1
     WHERE optuna_study_id = OLD.study_id AND state = OLD.state::text;
  END IF;
  IF TG_OP IN ('INSERT', 'UPDATE') THEN
    INSERT INTO lrtune_trial_counts AS c (optuna_study_id, state, n)
    VALUES (NEW.study_id, NEW.state::text, 1)
    ON CONFLICT (optuna_study_id, state) DO UPDATE SET n = c.n + 1;
  END IF;
  IF TG_OP = 'UPDATE' AND NEW.state::text = 'COMPLETE' THEN
    PERFORM {name}_consider_best(NEW.trial_id);
  END IF;
  RETURN NULL;
END $$ LANGUAGE plpgsql"""
    on_value = f"""
CREATE OR REPLACE FUNCTION {name}_value() RETURNS trigger AS $$
BEGIN
  IF NEW.objective = 0 THEN PERFORM {name}_consider_best(NEW.trial_id); END IF;
  RETURN NULL;
END $$ LANGUAGE plpgsql"""
    on_study = f"""
CREATE OR REPLACE FUNCTION {name}_study_delete() RETURNS trigger AS $$
BEGIN
  DELETE FROM lrtune_trial_counts WHERE optuna_study_id = OLD.study_id;
  DELETE FROM lrtune_study_best WHERE optuna_study_id = OLD.study_id;
  RETURN NULL;
END $$ LANGUAGE plpgsql"""
    return [
        consider, counts, on_value, on_study,
        f"CREATE OR REPLACE TRIGGER {name}_trials AFTER INSERT OR DELETE OR UPDATE OF state "
        f"ON trials FOR EACH ROW EXECUTE FUNCTION {name}_count_trials()",
        f"CREATE OR REPLACE TRIGGER {name}_value AFTER INSERT ON trial_values FOR EACH ROW "
        f"EXECUTE FUNCTION {name}_value()",
        f"CREATE OR REPLACE TRIGGER {name}_study_delete AFTER DELETE ON studies FOR EACH ROW "
        f"EXECUTE FUNCTION {name}_study_delete()",
    ]


def installed(conn: sa.Connection) -> bool:
    if conn.dialect.name == "sqlite":
        query = "SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = :name"
        return conn.execute(sa.text(query), {"name": f"lrtune_{VERSION}_value"}).first() \
            is not None
    return conn.execute(sa.text("SELECT 1 FROM pg_trigger WHERE tgname = :name"),
                        {"name": f"lrtune_{VERSION}_value"}).first() is not None


def install(db: Database, locked: sa.Connection | None = None) -> None:
    """Create the triggers (once per database) and count what is there already, with
    writers held off so that no trial is counted twice or missed. ``locked``: a connection
    holding the schema lock, to install on (its transaction commits it)."""
    if locked is not None:
        if not installed(locked):
            _install(locked)
        return
    with db.transaction() as conn:
        if installed(conn):
            return
    with db.transaction() as conn:
        _install(conn)


def _install(conn: sa.Connection) -> None:
    if conn.dialect.name == "sqlite":
        conn.execute(sa.text("DELETE FROM lrtune_trial_counts"))  # takes the write lock
        never_reuse_ids(conn)
        statements = _sqlite_triggers()
    else:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(7460991)"))  # one installer
        if installed(conn):
            return
        conn.execute(sa.text("LOCK TABLE trials, trial_values IN SHARE ROW EXCLUSIVE MODE"))
        statements = _postgresql_triggers()
    for statement in statements:
        conn.exec_driver_sql(statement)
    # a page of a study's trials by number, read without sorting the whole study
    conn.exec_driver_sql("CREATE INDEX IF NOT EXISTS ix_lrtune_trials_study_number "
                         "ON trials (study_id, number)")
    recount(conn)


def never_reuse_ids(conn: sa.Connection) -> None:
    """SQLite gives a new row the highest id plus one, so the ids of a deleted study's
    trials (or of the study) can go to the next ones, and a worker still writing a trial of
    the deleted study would write into another's. Optuna's ``studies`` and ``trials`` are
    rebuilt with AUTOINCREMENT (the same columns, rows and indexes), which never hands an id
    out twice, as PostgreSQL's sequences do not."""
    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    operations = Operations(MigrationContext.configure(conn))
    for table in ("studies", "trials"):
        ddl = conn.execute(sa.text("SELECT sql FROM sqlite_master WHERE type = 'table' AND "
                                   "name = :name"), {"name": table}).scalar_one()
        if "AUTOINCREMENT" not in ddl.upper():
            with operations.batch_alter_table(table, recreate="always",
                                              table_kwargs={"sqlite_autoincrement": True}):
                pass


def recount(conn: sa.Connection) -> None:
    """Counts and best of every study from the trials as they are (in the caller's lock)."""
    t, v = internals.TRIALS, internals.VALUES
    conn.execute(trial_counts.delete())
    conn.execute(study_best.delete())
    rows = conn.execute(sa.select(t.c.study_id, t.c.state, sa.func.count())
                        .group_by(t.c.study_id, t.c.state)).all()
    if rows:
        conn.execute(trial_counts.insert(), [
            {"optuna_study_id": sid, "state": state.name, "n": n} for sid, state, n in rows])
    directions = dict(conn.execute(sa.select(
        internals.STUDY_DIRECTIONS.c.study_id, internals.STUDY_DIRECTIONS.c.direction).where(
        internals.STUDY_DIRECTIONS.c.objective == 0)).all())
    best: dict[int, tuple[tuple[int, float, int], dict[str, object]]] = {}
    for sid, trial_id, value, kind in conn.execute(
            sa.select(t.c.study_id, t.c.trial_id, v.c.value, v.c.value_type)
            .join(v, v.c.trial_id == t.c.trial_id)
            .where(t.c.state == TrialState.COMPLETE, v.c.objective == 0)
            .order_by(t.c.trial_id)):
        minimize = directions.get(sid) is None or directions[sid].name == "MINIMIZE"
        key = _key(kind.name, value, minimize)
        if sid not in best or key < best[sid][0]:
            best[sid] = (key, {"optuna_study_id": sid, "trial_id": trial_id, "value": value,
                               "value_type": kind.name})
    if best:
        conn.execute(study_best.insert(), [row for _, row in best.values()])


def _key(kind: str, value: float | None, minimize: bool) -> tuple[int, float, int]:
    if kind == "FINITE":
        assert value is not None
        return (1, value if minimize else -value, 0)
    return (0 if (kind == "INF_NEG") == minimize else 2, 0.0, 0)


def shown_value(value: float | None, kind: str) -> float:
    """A stored best value as a float (infinities are kept as a kind, the value NULL)."""
    if kind == "FINITE":
        assert value is not None
        return float(value)
    return math.inf if kind == "INF_POS" else -math.inf


def counts(conn: sa.Connection, optuna_ids: list[int]) -> dict[int, dict[str, int]]:
    """Trials per state of each study (states without trials left out)."""
    found: dict[int, dict[str, int]] = {i: {} for i in optuna_ids}
    if optuna_ids:
        for sid, state, n in conn.execute(sa.select(
                trial_counts.c.optuna_study_id, trial_counts.c.state, trial_counts.c.n)
                .where(trial_counts.c.optuna_study_id.in_(optuna_ids))):
            found[sid][state] = int(n)
    return found
