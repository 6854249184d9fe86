"""What can be searched: schedule families, LR previews and tasks."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from lrtune.errors import SpecError
from lrtune.schedules import describe_catalogue, from_settings
from lrtune.spec import FamilyName
from lrtune.tasks import task_info, task_names
from lrtune_service.deps import SettingsDep
from lrtune_service.errors import ApiError, responses
from lrtune_service.schemas import Curve

router = APIRouter(tags=["catalogue"])
CURVE_ARGS = {"epochs", "steps_per_epoch", "lr", "warmup"}


@router.get("/schedules", responses=responses(401))
def list_schedules() -> dict[str, Any]:
    """Every family and modifier: parameters (default, search range, unit) and formula."""
    return describe_catalogue()


@router.get("/schedules/{family}/curve", response_model=Curve,
            responses=responses(401, 422))
def schedule_curve(family: FamilyName, request: Request, settings: SettingsDep,
                   epochs: int = Query(10, ge=1, le=1000),
                   steps_per_epoch: int = Query(10, ge=1, le=100_000),
                   lr: float = Query(0.1, gt=0, le=1e6), warmup: bool = False) -> Curve:
    """LR at every step. Other query parameters set family parameters (``gamma=0.5``),
    warmup (``warmup.fraction=0.1``) or clip (``clip.max_lr=0.05``). At most
    ``LRTUNE_MAX_CURVE_STEPS`` steps (epochs x steps_per_epoch; 422 above)."""
    steps = epochs * steps_per_epoch
    if steps > settings.max_curve_steps:
        raise ApiError(422, "over_limit", f"epochs: {epochs} x {steps_per_epoch} steps per "
                       f"epoch = {steps} steps is over the limit {settings.max_curve_steps}",
                       "epochs")
    pairs = [(k, v) for k, v in request.query_params.items() if k not in CURVE_ARGS]
    schedule = from_settings(family, pairs, warmup)
    lrs = schedule.curve(steps, steps_per_epoch, lr)
    return Curve(family=family, schedule=schedule.to_dict(), epochs=epochs,
                 steps_per_epoch=steps_per_epoch, lr=lrs)


@router.get("/tasks", responses=responses(401))
def list_tasks() -> list[dict[str, Any]]:
    """Every task this service can describe; one it cannot (a plugin without its torch-free
    ``lrtune.task_info`` entry point, where torch is missing) is listed with the reason."""
    described: list[dict[str, Any]] = []
    for name in task_names():
        try:
            described.append(task_info(name).describe())
        except SpecError as e:
            described.append({"name": name, "error": e.message})
    return described
