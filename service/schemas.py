"""Response models of the REST API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class Progress(BaseModel):
    n_done: int
    n_trials: int
    complete: int
    pruned: int
    running: int
    waiting: int
    failed: int


class BestOut(BaseModel):
    number: int
    value: float
    params: dict[str, Any]
    schedule: dict[str, Any] | None = None
    optimizer: dict[str, Any] | None = None
    batch_size: int | None = None


class LrRangeOut(BaseModel):
    """The base-LR range searched, from the LR range test (``space.lr: "auto"``)."""

    low: float
    high: float
    by_optimizer: dict[str, list[float]]  # each sweep's suggested [low, high]


class StudyOut(BaseModel):
    id: int
    name: str
    task: str
    status: str
    owner: str
    reason: str | None
    progress: Progress
    best: BestOut | None
    spec: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    dashboard: str
    lr_range: LrRangeOut | None = None


class StudyList(BaseModel):
    items: list[StudyOut]
    total: int
    limit: int
    offset: int


class HorizonOut(BaseModel):
    """A "horizon" ladder's run: rung ``rung`` of ``rungs`` (the top one the full horizon),
    the whole schedule on ``fraction`` of the study's optimizer steps."""

    rung: int
    rungs: int
    fraction: float
    promoted_from: int | None = Field(None, description="the trial whose parameters this "
                                      "run repeats on a longer horizon")


class TrialOut(BaseModel):
    number: int
    state: str
    params: dict[str, Any]
    value: float | None
    reason: str | None
    retry_of: int | None
    started_at: datetime | None
    finished_at: datetime | None
    horizon: HorizonOut | None = None


class TrialList(BaseModel):
    items: list[TrialOut]
    total: int
    limit: int
    offset: int


class TrialDetail(TrialOut):
    metric: str
    metric_curve: list[float]
    lr_curve: list[float]
    config: dict[str, Any] | None
    metrics: dict[str, float] | None


class Curve(BaseModel):
    family: str
    schedule: dict[str, Any]
    epochs: int
    steps_per_epoch: int
    lr: list[float]


class Health(BaseModel):
    status: str
