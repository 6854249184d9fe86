"""Shape store records and Optuna trials into response models."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import optuna

from lrtune import study as names
from lrtune.errors import NotFound, SpecError
from lrtune.space import SearchSpace, TrialConfig
from lrtune.store import DONE, FAILED, RUNNING, Store, StudyRecord
from service.errors import ApiError
from service.schemas import BestOut, LrRangeOut, Progress, StudyOut, TrialDetail, TrialOut


def progress(counts: dict[str, int], n_trials: int) -> Progress:
    c = counts
    return Progress(n_done=c.get("COMPLETE", 0) + c.get("PRUNED", 0), n_trials=n_trials,
                    complete=c.get("COMPLETE", 0), pruned=c.get("PRUNED", 0),
                    running=c.get("RUNNING", 0), waiting=c.get("WAITING", 0),
                    failed=c.get("FAIL", 0))


def decode(record: StudyRecord, params: dict[str, Any]) -> TrialConfig:
    return SearchSpace(record.spec.space, names.direction(record.spec)).decode(params)


def best_trial(store: Store, record: StudyRecord) -> optuna.trial.FrozenTrial | None:
    try:
        return store.optuna_storage.get_best_trial(store.optuna_study_id(record))
    except ValueError:
        return None
    except KeyError:
        raise missing(record) from None


def missing(record: StudyRecord) -> NotFound:
    return NotFound(f"study {record.id} ({record.name}) has no Optuna study any more")


def best_out(record: StudyRecord, trial: optuna.trial.FrozenTrial) -> BestOut:
    """The best trial; its schedule and optimizer None when its parameters do not decode
    (written to the database by other means than lrtune's workers)."""
    assert trial.value is not None
    try:
        config = decode(record, trial.params)
    except SpecError:
        return BestOut(number=trial.number, value=trial.value, params=trial.params)
    return BestOut(number=trial.number, value=trial.value, params=trial.params,
                   schedule=config.schedule.to_dict(), optimizer=config.optimizer.to_dict(),
                   batch_size=config.batch_size)


def study_out(store: Store, record: StudyRecord) -> StudyOut:
    """A study as the API shows it; reading never writes. A running study whose budget is
    complete shows ``done`` (the worker that ends its last trial stores it); one whose Optuna
    study was removed behind lrtune's back shows ``failed`` with the reason."""
    status, reason = record.status, record.reason
    try:
        counts = progress(store.trial_counts(record), record.n_trials)
        best = best_trial(store, record)
        dashboard = f"/dashboard/studies/{store.optuna_study_id(record)}"
    except NotFound as missing:
        counts, best, dashboard = progress({}, record.n_trials), None, "/dashboard/"
        status, reason = FAILED, str(missing)
    if status == RUNNING and counts.n_done >= counts.n_trials:
        status = DONE
    return StudyOut(
        id=record.id, name=record.name, task=record.task, status=status,
        owner=record.owner, reason=reason, progress=counts,
        best=best_out(record, best) if best is not None else None,
        spec=record.spec.model_dump(mode="json"), created_at=record.created_at,
        updated_at=record.updated_at, finished_at=record.finished_at,
        dashboard=dashboard, lr_range=lr_range_out(record))


def lr_range_out(record: StudyRecord) -> LrRangeOut | None:
    bounds = record.lr_bounds
    if bounds is None:
        return None
    return LrRangeOut(**bounds.summary())


def local_time(moment: datetime | None) -> datetime | None:
    """Optuna stamps trials with naive local time."""
    return moment.astimezone() if moment is not None and moment.tzinfo is None else moment


def trial_out(trial: optuna.trial.FrozenTrial) -> TrialOut:
    return TrialOut(number=trial.number, state=trial.state.name, params=trial.params,
                    value=trial.value, reason=trial.user_attrs.get(names.ATTR_REASON),
                    retry_of=trial.user_attrs.get("retry_of"),
                    started_at=local_time(trial.datetime_start),
                    finished_at=local_time(trial.datetime_complete))


def trial_detail(record: StudyRecord, trial: optuna.trial.FrozenTrial) -> TrialDetail:
    base = trial_out(trial).model_dump()
    values = [trial.intermediate_values[k] for k in sorted(trial.intermediate_values)]
    return TrialDetail(**base, metric=record.spec.objective, metric_curve=values,
                       lr_curve=list(trial.user_attrs.get(names.ATTR_LR_CURVE, [])),
                       config=trial.user_attrs.get(names.ATTR_CONFIG),
                       metrics=trial.user_attrs.get(names.ATTR_METRICS))


def trials_of(store: Store, record: StudyRecord) -> list[optuna.trial.FrozenTrial]:
    try:
        return store.optuna_storage.get_all_trials(store.optuna_study_id(record),
                                                   deepcopy=False)
    except KeyError:
        raise missing(record) from None


def find_trial(store: Store, record: StudyRecord, number: int) -> optuna.trial.FrozenTrial:
    storage = store.optuna_storage
    try:
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            store.optuna_study_id(record), number)
    except KeyError:
        raise ApiError(404, "not_found", f"study {record.id} has no trial {number}",
                       "number") from None
    return storage.get_trial(trial_id)
