"""Studies and their trials."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel

from lrtune.export import export
from lrtune.plots import range_test_png, study_png, trial_png
from lrtune.results import parse_spec
from lrtune.space import SearchSpace
from lrtune.spec import StudySpec
from lrtune.store import Quota, Status, Store, StudyRecord
from lrtune.store.reads import BestTrial, Summary
from lrtune.study import ATTR_STEPS_PER_EPOCH, direction
from lrtune_service.deps import Caller, SettingsDep, StoreDep, owned_study
from lrtune_service.errors import ApiError, responses
from lrtune_service.plot_cache import PlotCache
from lrtune_service.schemas import BestOut, StudyList, StudyOut, TrialDetail, TrialList
from lrtune_service.views import best_out, decode, study_out, trial_detail, trial_out

router = APIRouter(prefix="/studies", tags=["studies"])
Limit = Query(50, ge=1, le=1000)
Offset = Query(0, ge=0, le=10_000_000)
StudyId = Annotated[int, Path(ge=1, le=2**31 - 1, description="study id")]
TrialNumber = Annotated[int, Path(ge=0, le=2**31 - 1, description="trial number")]


@router.post("", status_code=201, response_model=StudyOut,
             responses=responses(400, 401, 409, 413, 422, 429))
def create_study(spec: StudySpec, store: StoreDep, settings: SettingsDep,
                 caller: Caller) -> StudyOut:
    """Create a study from a spec; workers start pulling its trials at once."""
    parse_spec(spec.model_dump())
    SearchSpace(spec.space, direction(spec))
    for field, value, limit in (("n_trials", spec.n_trials, settings.max_trials),
                                ("epochs", spec.epochs, settings.max_epochs)):
        if value > limit:
            raise ApiError(422, "over_limit", f"{field}: {value} is over the limit {limit}",
                           field)
    if isinstance(spec.pack, int) and spec.pack > settings.max_pack:
        raise ApiError(422, "over_limit", f"pack: {spec.pack} is over the limit "
                       f"{settings.max_pack}", "pack")
    quota = Quota(settings.max_running_studies, settings.max_queued_trials)
    return shown(store, store.create_study(spec, caller.public_id, quota))


def json_of(model: BaseModel) -> Response:
    """The model as JSON, serialised once: the route's ``response_model`` documents it, and
    FastAPI would otherwise turn a built model into a dict and validate it again."""
    return Response(model.model_dump_json(), media_type="application/json")


def shown(store: Store, record: StudyRecord) -> StudyOut:
    return study_out(record, store.study_summary(record.id)[1])


@router.get("", response_model=StudyList, responses=responses(401, 422))
def list_studies(store: StoreDep, status: Status | None = None, limit: int = Limit,
                 offset: int = Offset) -> Response:
    """A page of studies: a few queries, however many trials they hold."""
    studies, total = store.study_page(status, limit, offset)
    return json_of(StudyList(items=[study_out(r, summary) for r, summary in studies],
                             total=total, limit=limit, offset=offset))


@router.get("/{study_id}", response_model=StudyOut,
            responses=responses(401, 404, 422))
def get_study(study_id: StudyId, store: StoreDep) -> Response:
    return json_of(study_out(*store.study_summary(study_id)))


@router.post("/{study_id}/cancel", response_model=StudyOut,
             responses=responses(401, 403, 404, 422))
def cancel_study(study_id: StudyId, store: StoreDep, caller: Caller) -> StudyOut:
    """Stop handing out trials of this study (running ones finish)."""
    owned_study(store, study_id, caller)
    return shown(store, store.cancel(study_id))


@router.delete("/{study_id}", status_code=204, responses=responses(401, 403, 404, 422))
def delete_study(study_id: StudyId, store: StoreDep, caller: Caller) -> Response:
    owned_study(store, study_id, caller)
    store.delete(study_id)
    return Response(status_code=204)


@router.get("/{study_id}/trials", response_model=TrialList,
            responses=responses(401, 404, 422))
def list_trials(study_id: StudyId, store: StoreDep, limit: int = Limit,
                offset: int = Offset) -> Response:
    """A page of the study's trials by number: the page's rows only."""
    rows, total = store.trial_page(study_id, limit, offset)
    return json_of(TrialList(items=[trial_out(r) for r in rows], total=total, limit=limit,
                             offset=offset))


@router.get("/{study_id}/trials/{number}", response_model=TrialDetail,
            responses=responses(401, 404, 422))
def get_trial(study_id: StudyId, number: TrialNumber, store: StoreDep) -> TrialDetail:
    record = store.get_study(study_id)
    return trial_detail(record, store.trial(record, number))


def best_of(record: StudyRecord, summary: Summary) -> BestTrial:
    best = summary.best
    if best is None:
        why = f" (it failed: {record.reason})" if record.status == "failed" else " yet"
        raise ApiError(409, "no_result", f"study {record.id} has no complete trial{why}", "id")
    return best


@router.get("/{study_id}/best", response_model=BestOut,
            responses=responses(401, 404, 409, 422))
def get_best(study_id: StudyId, store: StoreDep) -> Response:
    record, summary = store.study_summary(study_id)
    return json_of(best_out(record, best_of(record, summary)))


@router.get("/{study_id}/best/code",
            responses={200: {"content": {"text/x-python": {}}}, **responses(401, 404, 409, 422)})
def get_best_code(study_id: StudyId, store: StoreDep,
                  framework: Literal["pytorch", "keras"] = "pytorch") -> Response:
    """The best trial's schedule and optimizer as ready-to-paste code."""
    record, summary = store.study_summary(study_id)
    best = best_of(record, summary)
    trial = store.trial(record, best.number)
    spe = int(trial.user_attrs.get(ATTR_STEPS_PER_EPOCH, 1))
    note = f"study {record.name} trial #{best.number}, {record.spec.objective} {best.value:.6g}"
    code = export(decode(record, best.params), framework, record.spec.epochs, spe, note,
                  objective=record.spec.objective, direction=direction(record.spec))
    return Response(code, media_type="text/x-python")


PNG: dict[int | str, dict[str, Any]] = {200: {"content": {"image/png": {}}}}
plots = PlotCache()


@router.get("/{study_id}/trials/{number}/plot", responses={**PNG, **responses(401, 404, 422)})
def plot_trial(study_id: StudyId, number: TrialNumber, store: StoreDep) -> Response:
    """LR and metric per epoch of one trial, as PNG (a finished trial's drawn once)."""
    record = store.get_study(study_id)
    trial = store.trial(record, number)
    version = trial.state.name if trial.state.is_finished() else None
    png = plots.get((record.id, f"trial {number}"), version,
                    lambda: trial_png(trial, record.spec.objective, record.name))
    return Response(png, media_type="image/png")


@router.get("/{study_id}/plot", responses={**PNG, **responses(401, 404, 409, 422)})
def plot_study(study_id: StudyId, store: StoreDep,
               kind: Literal["lr", "loss", "families", "lr_range"] = "loss") -> Response:
    """LR or metric curves of the finished trials by family, final metric by family, or the
    LR range test (``lr_range``, 409 until one ran). Drawn once per study version (its
    finished trials), however many clients ask at once."""
    record = store.get_study(study_id)
    if kind == "lr_range":
        bounds = record.lr_bounds
        if bounds is None:
            raise ApiError(409, "no_range_test", "this study has no LR range test result "
                           "(its space.lr is not \"auto\", or no worker has run it yet)", "kind")
        return Response(range_test_png(bounds, record.name), media_type="image/png")
    counts = store.study_summary(study_id)[1].counts
    version = tuple(sorted((s, n) for s, n in counts.items() if s not in ("RUNNING", "WAITING")))
    png = plots.get((record.id, kind), version, lambda: study_png(
        kind, store.all_trials(record), record.spec.objective,
        direction(record.spec) == "minimize", record.name))
    return Response(png, media_type="image/png")
