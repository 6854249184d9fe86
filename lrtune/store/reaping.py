"""Reaping: a RUNNING trial whose worker went silent goes FAIL (reason ``lost``) and, within
the retry limit, a WAITING copy with the same parameters takes its place."""

from __future__ import annotations

import json
import logging

import optuna
import sqlalchemy as sa
from optuna.distributions import distribution_to_json
from optuna.trial import TrialState

from lrtune import optuna_internals as internals
from lrtune import study as names
from lrtune.store import trials
from lrtune.store.db import Database

log = logging.getLogger("lrtune.store")


class Reaper:
    def __init__(self, db: Database, storage: optuna.storages.BaseStorage, grace: int,
                 max_retries: int) -> None:
        self.db, self.storage = db, storage
        self.grace, self.max_retries = grace, max_retries

    def reap(self, study_name: str, optuna_study_id: int) -> int:
        """Fail and re-queue the study's trials without a heartbeat for the grace period.
        Call under the study's claim lock: a copy takes the next trial number."""
        with self.db.transaction() as conn:
            stale = trials.stale(conn, optuna_study_id, self.grace)
        for trial_id in stale:
            reason = f"lost: no heartbeat for {self.grace} s"
            if self.fail_and_requeue(trial_id, reason, count_retry=True):
                log.warning("study %s trial id %d lost (no heartbeat); re-queued", study_name,
                            trial_id)
        return len(stale)

    def fail_and_requeue(self, trial_id: int, reason: str, count_retry: bool) -> bool:
        """In one transaction, so no crash can split them: the RUNNING trial goes FAIL with
        ``reason`` and, within the retry limit, a WAITING copy with the same params is queued
        (``retry_of`` = its number). False when the trial had already finished.

        Call under the study's claim lock: the copy takes the next trial number.
        """
        frozen = self.storage.get_trial(trial_id)
        history = list(frozen.system_attrs.get("retry_history", []))
        if count_retry:
            history.append(frozen.number)
        again = not count_retry or len(history) <= self.max_retries
        t, attrs = internals.TRIALS, internals.USER_ATTRS
        with self.db.transaction() as conn:
            if not conn.execute(t.update().where(
                    t.c.trial_id == trial_id, t.c.state == TrialState.RUNNING).values(
                    state=TrialState.FAIL, datetime_complete=trials.optuna_now())).rowcount:
                return False
            conn.execute(attrs.delete().where(attrs.c.trial_id == trial_id,
                                              attrs.c.key == names.ATTR_REASON))
            conn.execute(attrs.insert().values(trial_id=trial_id, key=names.ATTR_REASON,
                                               value_json=json.dumps(reason)))
            if not again:
                return True
            study_id = conn.execute(sa.select(t.c.study_id).where(
                t.c.trial_id == trial_id)).scalar_one()
            number = conn.execute(sa.select(sa.func.count()).select_from(t).where(
                t.c.study_id == study_id)).scalar_one()
            copy_id = conn.execute(t.insert().values(
                number=number, study_id=study_id, state=TrialState.WAITING
            ).returning(t.c.trial_id)).scalar_one()
            if frozen.params:
                conn.execute(internals.PARAMS.insert(), [
                    {"trial_id": copy_id, "param_name": name,
                     "param_value": frozen.distributions[name].to_internal_repr(value),
                     "distribution_json": distribution_to_json(frozen.distributions[name])}
                    for name, value in frozen.params.items()])
            conn.execute(attrs.insert().values(trial_id=copy_id, key="retry_of",
                                               value_json=json.dumps(frozen.number)))
            if names.ATTR_HORIZON in frozen.user_attrs:  # a ladder's run: the same rung again
                conn.execute(attrs.insert().values(trial_id=copy_id, key=names.ATTR_HORIZON,
                                                   value_json=json.dumps(
                                                       frozen.user_attrs[names.ATTR_HORIZON])))
            original = frozen.system_attrs.get("failed_trial", frozen.number)
            conn.execute(internals.SYSTEM_ATTRS.insert(), [
                {"trial_id": copy_id, "key": "failed_trial", "value_json": json.dumps(original)},
                {"trial_id": copy_id, "key": "retry_history",
                 "value_json": json.dumps(history)}])
        return True
