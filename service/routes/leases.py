"""The trial-lease protocol, v1: claim, heartbeat, report, finish, hand back.

Thin routes over ``Store.leases`` (claims, budget, pruning and endings live in the store).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path, Response

from lrtune import study as names
from lrtune.store.leases import EpochReport, TrialEnd
from lrtune_service.deps import Leaser, SettingsDep, StoreDep
from lrtune_service.errors import ApiError, responses
from lrtune_service.lease_schemas import (
    PROTOCOL,
    ClaimIn,
    EndedOut,
    EndItem,
    FinishIn,
    LeaseOut,
    PrunedOut,
    ReleasedOut,
    ReleaseIn,
    ReportIn,
    RunningOut,
    StudyOfLease,
    TrialOfLease,
)

router = APIRouter(prefix=f"/v{PROTOCOL}/leases", tags=["trial leases"])
LeaseId = Annotated[int, Path(ge=1, le=2**31 - 1, description="lease id")]
ON_LEASE = responses(400, 401, 403, 404, 409, 413, 422)


@router.post("", status_code=201, response_model=LeaseOut,
             responses={204: {"description": "nothing to claim now: ask again after a pause"},
                        **responses(400, 401, 403, 404, 409, 413, 422)})
def claim(body: ClaimIn, store: StoreDep, settings: SettingsDep, caller: Leaser) -> Response:
    """Claim ``count`` trials of a study (or of any study this token may train) as one lease:
    each trial's parameters, schedule and optimizer config and seed. 409 ``study_ended``
    when the study named no longer hands out trials."""
    count = None if body.count == "pack" else body.count
    if count is not None and count > settings.max_pack:
        raise ApiError(422, "over_limit", f"count: {count} is over the limit "
                       f"{settings.max_pack}", "count")
    lease = store.leases.claim(caller, body.study_id, count, settings.max_pack)
    if lease is None:
        return Response(status_code=204)
    spec = lease.record.spec
    out = LeaseOut(
        lease=lease.id,
        study=StudyOfLease(id=lease.record.id, name=lease.record.name, task=spec.task,
                           epochs=spec.epochs, objective=spec.objective,
                           direction=names.direction(spec), steps_per_epoch=spec.steps_per_epoch,
                           spec=spec.model_dump(mode="json")),
        trials=[TrialOfLease(number=t.number, params=t.params, config=t.config, seed=t.seed,
                             horizon=t.horizon)
                for t in lease.trials],
        heartbeat_interval=settings.heartbeat_interval, grace=settings.heartbeat_grace)
    return Response(out.model_dump_json(), status_code=201, media_type="application/json")


@router.post("/{lease_id}/heartbeat", response_model=RunningOut, responses=ON_LEASE)
def heartbeat(lease_id: LeaseId, store: StoreDep, caller: Leaser) -> RunningOut:
    """Keep the lease's trials alive; the numbers of those still running (409 when none)."""
    return RunningOut(running=store.leases.heartbeat(caller, lease_id))


@router.post("/{lease_id}/report", response_model=PrunedOut, responses=ON_LEASE,
             response_model_exclude_none=True)
def report(lease_id: LeaseId, body: ReportIn, store: StoreDep, caller: Leaser) -> PrunedOut:
    """One epoch of the lease's trials (or several: ``later``): the objective's value and the
    LR. The answer names the trials the study's pruner prunes (decided here, with the study's
    history); they are ended PRUNED and must stop. ``finish``: trials that end with it (a
    request saved), ended as ``/finish`` ends them and named in the answer's ``ended``. 409 for
    a trial not running under this lease; a refused report writes nothing."""
    epochs = [[EpochReport(t.number, t.value, t.lr, dict(t.metrics)) for t in items]
              for items in (body.trials, *body.later)]
    done = store.leases.report(caller, lease_id, body.epoch, epochs, body.steps_per_epoch,
                               _ends(body.finish))
    return PrunedOut(pruned=done.pruned, ended=done.ended if body.finish else None)


@router.post("/{lease_id}/finish", response_model=EndedOut, responses=ON_LEASE)
def finish(lease_id: LeaseId, body: FinishIn, store: StoreDep, caller: Leaser) -> EndedOut:
    """End the lease's trials: COMPLETE with the value, PRUNED or FAIL with a reason."""
    return EndedOut(ended=store.leases.finish(caller, lease_id, _ends(body.trials)))


def _ends(items: list[EndItem]) -> list[TrialEnd]:
    return [TrialEnd(t.number, t.state, t.value, t.reason, dict(t.metrics)) for t in items]


@router.post("/{lease_id}/release", response_model=ReleasedOut, responses=ON_LEASE)
def release(lease_id: LeaseId, store: StoreDep, caller: Leaser,
            body: Annotated[ReleaseIn | None, Body()] = None) -> ReleasedOut:
    """Hand the lease's running trials back unfinished (a client stopping): they are
    re-queued and run again, not counted as failures."""
    reason = (body or ReleaseIn()).reason
    return ReleasedOut(handed_back=store.leases.release(caller, lease_id, reason))
