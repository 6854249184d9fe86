"""Shape store records and Optuna trials into response models."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import optuna

from lrtune import study as names
from lrtune.space import SearchSpace, TrialConfig
from lrtune.store import Store, StudyRecord
from service.errors import ApiError
from service.schemas import BestOut, LrRangeOut, Progress, StudyOut, TrialDetail, TrialOut


def progress(store: Store, record: StudyRecord) -> Progress:
    c = store.mark_done_if_complete(record)
    return Progress(n_done=c["COMPLETE"] + c["PRUNED"], n_trials=record.n_trials,
                    complete=c["COMPLETE"], pruned=c["PRUNED"], running=c["RUNNING"],
                    waiting=c["WAITING"], failed=c["FAIL"])


def decode(record: StudyRecord, params: dict[str, Any]) -> TrialConfig:
    return SearchSpace(record.spec.space, names.direction(record.spec)).decode(params)


def best_trial(store: Store, record: StudyRecord) -> optuna.trial.FrozenTrial | None:
    try:
        return store.optuna_storage.get_best_trial(store.optuna_study_id(record))
    except ValueError:
        return None


def best_out(record: StudyRecord, trial: optuna.trial.FrozenTrial) -> BestOut:
    config = decode(record, trial.params)
    assert trial.value is not None
    return BestOut(number=trial.number, value=trial.value, params=trial.params,
                   schedule=config.schedule.to_dict(), optimizer=config.optimizer.to_dict(),
                   batch_size=config.batch_size)


def study_out(store: Store, record: StudyRecord) -> StudyOut:
    counts = progress(store, record)
    if record.status == "running" and counts.n_done >= counts.n_trials:
        record = store.get_study(record.id)  # just marked done
    best = best_trial(store, record)
    return StudyOut(
        id=record.id, name=record.name, task=record.task, status=record.status,
        owner=record.owner, reason=record.reason, progress=counts,
        best=best_out(record, best) if best is not None else None,
        spec=record.spec.model_dump(mode="json"), created_at=record.created_at,
        updated_at=record.updated_at, finished_at=record.finished_at,
        dashboard=f"/dashboard/studies/{store.optuna_study_id(record)}",
        lr_range=lr_range_out(record))


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
    return store.optuna_storage.get_all_trials(store.optuna_study_id(record), deepcopy=False)


def find_trial(store: Store, record: StudyRecord, number: int) -> optuna.trial.FrozenTrial:
    storage = store.optuna_storage
    try:
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            store.optuna_study_id(record), number)
    except KeyError:
        raise ApiError(404, "not_found", f"study {record.id} has no trial {number}",
                       "number") from None
    return storage.get_trial(trial_id)
