"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.deps import StoreDep
from service.errors import ApiError, responses
from service.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """Liveness: answered on the event loop, never behind the thread pool or the database."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses=responses(503))
def readyz(store: StoreDep) -> Health:
    try:
        store.ping()
    except Exception as error:  # any driver error means "not ready"
        raise ApiError(503, "unavailable", f"database unreachable: {error}") from None
    return Health(status="ready")


@router.get("/metrics", responses={200: {"content": {"text/plain": {}}}})
def metrics(request: Request) -> Response:
    registry = request.app.state.telemetry.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
