"""Bodies of the trial-lease protocol (``/v1/leases``): what clients send and get back."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

PROTOCOL = 1  # the lease protocol's version: its paths start with /v1/
Number = Annotated[int, Field(ge=0, le=2**31 - 1, description="trial number")]
Finite = Annotated[float, Field(allow_inf_nan=False, ge=-1e300, le=1e300)]
Metrics = Annotated[dict[Annotated[str, Field(max_length=100)], Finite],
                    Field(default_factory=dict, max_length=32)]


class Body(BaseModel):
    """Strict: a number is a JSON number, not a string or a boolean that looks like one."""

    model_config = ConfigDict(extra="forbid", strict=True)


class ClaimIn(Body):
    study_id: int | None = Field(None, ge=1, le=2**31 - 1, description="a study to claim "
                                 "from; none: any study this token may train")
    count: Annotated[int, Field(ge=1, le=1_000_000)] | Literal["pack"] = Field(
        1, description='trials to claim at once (a pack; at most the server\'s max_pack), or '
        '"pack": the study\'s own `pack` where its spec gives a number, else one trial (a '
        "worker that does not know the study yet)")

    model_config = ConfigDict(extra="forbid", strict=True,
                              json_schema_extra={"examples": [{"study_id": 1, "count": 1}]})


class StudyOfLease(BaseModel):
    id: int
    name: str
    task: str
    epochs: int
    objective: str
    direction: str
    steps_per_epoch: int | None
    spec: dict[str, Any]


class TrialOfLease(BaseModel):
    number: int
    params: dict[str, Any]
    config: dict[str, Any] = Field(description="schedule, optimizer and batch size: what "
                                   "lrtune_worker builds in torch")
    seed: int
    horizon: dict[str, Any] | None = Field(None, description='a "horizon" ladder\'s run: '
                                           "its rung of rungs, and the fraction of the "
                                           "study's optimizer steps it trains")


class LeaseOut(BaseModel):
    lease: int
    study: StudyOfLease
    trials: list[TrialOfLease]
    heartbeat_interval: float = Field(description="seconds between heartbeats")
    grace: float = Field(description="seconds of silence after which the trials are lost")
    protocol: int = PROTOCOL


class RunningOut(BaseModel):
    running: list[int]


class EpochItem(Body):
    number: Number
    value: Finite = Field(description="the objective's value this epoch")
    lr: Annotated[float, Field(allow_inf_nan=False, ge=0, le=1e300)] | None = Field(
        None, description="the LR the epoch started with")
    metrics: Metrics


class EndItem(Body):
    number: Number
    state: Literal["COMPLETE", "PRUNED", "FAIL"]
    value: Finite | None = None
    reason: str | None = Field(None, max_length=1000)
    metrics: Metrics


class ReportIn(Body):
    epoch: int = Field(ge=0, le=1_000_000, description="0-based epoch")
    trials: list[EpochItem] = Field(min_length=1, max_length=1024)
    later: list[Annotated[list[EpochItem], Field(min_length=1, max_length=1024)]] = Field(
        default_factory=list, max_length=10_000,
        description="the epochs after `epoch`, in order (epoch + 1, epoch + 2, …): a client "
        "sends several at once when no pruner waits on them (the study's pruner, if any, "
        "judges each trial at its last epoch here); each trial's epochs in order, a trial "
        "may stop early")
    steps_per_epoch: int | None = Field(None, ge=1, le=10_000_000)
    finish: list[EndItem] = Field(
        default_factory=list, max_length=1024,
        description="trials that end with this report, as `/finish` would end them (a "
        "request saved): after their last epoch, here or sent before")

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"epoch": 0, "trials": [{"number": 7, "value": 1.0, "lr": 0.01}]},
        {"epoch": 9, "trials": [{"number": 7, "value": 0.4, "lr": 0.0}],
         "finish": [{"number": 7, "state": "COMPLETE", "value": 0.4}]}]})


class PrunedOut(BaseModel):
    pruned: list[int] = Field(description="trials the study's pruner pruned: ended PRUNED")
    ended: list[int] | None = Field(None, description="with `finish`: the trials it ended "
                                    "as it asked")


class FinishIn(Body):
    trials: list[EndItem] = Field(min_length=1, max_length=1024)

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"trials": [{"number": 5, "state": "COMPLETE", "value": 0.5}]}]})


class EndedOut(BaseModel):
    ended: list[int]


class ReleaseIn(Body):
    reason: str = Field("released by its client", max_length=500)


class ReleasedOut(BaseModel):
    handed_back: list[int]
