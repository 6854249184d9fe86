"""Shape store records, study summaries and trials into response models. Nothing here reads
the database: the routes hand in what the store read."""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

import optuna

from lrtune import study as names
from lrtune.errors import NotFound, SpecError
from lrtune.horizon import Rung
from lrtune.space import SearchSpace, TrialConfig
from lrtune.store import FAILED, RUNNING, StudyRecord, ended
from lrtune.store.reads import BestTrial, Summary, TrialRow
from lrtune_service.schemas import (
    BestOut,
    HorizonOut,
    LrRangeOut,
    Progress,
    StudyOut,
    TrialDetail,
    TrialOut,
)


def progress(counts: dict[str, int], n_trials: int) -> Progress:
    c = counts
    return Progress(n_done=c.get("COMPLETE", 0) + c.get("PRUNED", 0), n_trials=n_trials,
                    complete=c.get("COMPLETE", 0), pruned=c.get("PRUNED", 0),
                    running=c.get("RUNNING", 0), waiting=c.get("WAITING", 0),
                    failed=c.get("FAIL", 0))


def decode(record: StudyRecord, params: dict[str, Any]) -> TrialConfig:
    return SearchSpace(record.spec.space, names.direction(record.spec)).decode(params)


def missing(record: StudyRecord) -> NotFound:
    return NotFound(f"study {record.id} ({record.name}) has no Optuna study any more")


def best_out(record: StudyRecord, best: BestTrial) -> BestOut:
    """The best trial; its schedule and optimizer None when its parameters do not decode
    (written to the database by other means than lrtune's workers). Kept per study and
    trial: a finished trial never changes."""
    key = (record.id, record.created_at, best.trial_id)  # ids repeat across databases
    kept = _best.get(key)
    if kept is None:
        kept = _best_out(record, best)
        with _best_lock:
            _best[key] = kept
            while len(_best) > KEPT:
                del _best[next(iter(_best))]
    return kept


KEPT = 4096
_best: dict[tuple[int, datetime, int], BestOut] = {}  # insertion order: the oldest first out
_best_lock = threading.Lock()


def _best_out(record: StudyRecord, best: BestTrial) -> BestOut:
    try:
        config = decode(record, best.params)
    except SpecError:
        return BestOut(number=best.number, value=best.value, params=best.params)
    return BestOut(number=best.number, value=best.value, params=best.params,
                   schedule=config.schedule.to_dict(), optimizer=config.optimizer.to_dict(),
                   batch_size=config.batch_size)


def study_out(record: StudyRecord, summary: Summary) -> StudyOut:
    """A study as the API shows it. A running study whose budget is complete shows how it
    ends (``done``, or ``failed`` when no trial completed; the worker that ends its last
    trial stores it); one whose Optuna study was removed
    behind lrtune's back shows ``failed`` with the reason."""
    status, reason = record.status, record.reason
    counts = progress(summary.counts, record.n_trials)
    if summary.optuna_id is None:
        status, reason = FAILED, str(missing(record))
    elif status == RUNNING and counts.n_done >= counts.n_trials:
        status, reason = ended(summary.counts)
    return StudyOut(
        id=record.id, name=record.name, task=record.task, status=status,
        owner=record.owner, reason=reason, progress=counts,
        best=best_out(record, summary.best) if summary.best is not None else None,
        spec=spec_json(record), created_at=record.created_at,
        updated_at=record.updated_at, finished_at=record.finished_at,
        dashboard=f"/dashboard/studies/{summary.optuna_id}" if summary.optuna_id is not None
        else "/dashboard/", lr_range=lr_range_out(record))


def spec_json(record: StudyRecord) -> dict[str, Any]:
    """The spec as JSON, made once per study (a spec never changes)."""
    kept = _specs.get((record.id, record.created_at))
    if kept is None:
        kept = record.spec.model_dump(mode="json")
        with _best_lock:
            _specs[(record.id, record.created_at)] = kept
            while len(_specs) > KEPT:
                del _specs[next(iter(_specs))]
    return kept


_specs: dict[tuple[int, datetime], dict[str, Any]] = {}


def lr_range_out(record: StudyRecord) -> LrRangeOut | None:
    bounds = record.lr_bounds
    if bounds is None:
        return None
    return LrRangeOut(**bounds.summary())


def local_time(moment: datetime | None) -> datetime | None:
    """Optuna stamps trials with naive local time."""
    return moment.astimezone() if moment is not None and moment.tzinfo is None else moment


def trial_out(row: TrialRow) -> TrialOut:
    return TrialOut(number=row.number, state=row.state, params=row.params, value=row.value,
                    reason=row.reason, retry_of=row.retry_of,
                    started_at=local_time(row.started_at),
                    finished_at=local_time(row.finished_at),
                    horizon=_horizon(row.horizon))


def _horizon(value: Any) -> HorizonOut | None:
    rung = Rung.from_attr(value)
    return None if rung is None else HorizonOut(**rung.attr())


def trial_detail(record: StudyRecord, trial: optuna.trial.FrozenTrial) -> TrialDetail:
    values = [trial.intermediate_values[k] for k in sorted(trial.intermediate_values)]
    return TrialDetail(
        number=trial.number, state=trial.state.name, params=trial.params, value=trial.value,
        reason=trial.user_attrs.get(names.ATTR_REASON),
        retry_of=trial.user_attrs.get("retry_of"), started_at=local_time(trial.datetime_start),
        finished_at=local_time(trial.datetime_complete), metric=record.spec.objective,
        metric_curve=values, lr_curve=list(trial.user_attrs.get(names.ATTR_LR_CURVE, [])),
        config=trial.user_attrs.get(names.ATTR_CONFIG),
        metrics=trial.user_attrs.get(names.ATTR_METRICS),
        horizon=_horizon(trial.user_attrs.get(names.ATTR_HORIZON)))
