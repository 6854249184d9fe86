"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from lrtune_service.deps import StoreDep
from lrtune_service.errors import ApiError, responses
from lrtune_service.schemas import Health

router = APIRouter(tags=["health"])
metrics_router = APIRouter(tags=["health"])  # follows closed reads


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """Liveness: answered on the event loop, never behind the thread pool or the database."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses=responses(503))
def readyz(request: Request, store: StoreDep) -> Health:
    """Ready: the database answers and every local worker (``serve --workers``) is alive."""
    try:
        store.ping()
    except Exception:  # any driver error means "not ready"; its text stays in the logs
        raise ApiError(503, "unavailable", "not ready") from None
    workers = getattr(request.app.state, "workers", None)
    if workers is not None and not workers.healthy():
        raise ApiError(503, "unavailable", "not ready")
    return Health(status="ready")


@metrics_router.get("/metrics", responses={200: {"content": {"text/plain": {}}},
                                           **responses(401)})
def metrics(request: Request) -> Response:
    registry = request.app.state.telemetry.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
