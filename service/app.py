"""The FastAPI application, with optuna-dashboard served beside it on the same database.

optuna-dashboard uses absolute paths (``/dashboard``, ``/api``, ``/static``, …) and breaks
under a sub-path mount, so those paths go to it unchanged and lrtune's own paths never start
with them.
"""

from __future__ import annotations

import asyncio

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lrtune.dashboard import CurveArtifactStore
from lrtune.settings import Settings, get_settings
from lrtune.store import Store
from service import errors
from service.dashboard import DashboardGate
from service.deps import read_dependencies
from service.errors import error_response
from service.routes import catalogue, health, session, studies
from service.telemetry import Telemetry


class BodyLimit:
    """Rejects request bodies over ``limit`` bytes with 413 before they are read."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            length = dict(scope.get("headers") or []).get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > self.limit):
                response = error_response(413, "too_large",
                                          f"request body over {self.limit} bytes", "body")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class RetryReads:
    """Retries GET/HEAD requests that hit a lost database connection (503), with backoff.

    The pool's pre-ping replaces dead connections at checkout; this covers the query that
    was in flight when its connection died.
    """

    def __init__(self, app: ASGIApp, attempts: int = 3, backoff: float = 0.2) -> None:
        self.app, self.attempts, self.backoff = app, attempts, backoff

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        async def empty() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        for attempt in range(self.attempts):
            held = _Held()
            await self.app(scope, empty if attempt else receive, held)
            retry = (held and held[0]["type"] == "http.response.start"
                     and held[0]["status"] == 503 and attempt < self.attempts - 1
                     and scope["path"] != "/readyz")
            if not retry:
                for message in held:
                    await send(message)
                return
            await asyncio.sleep(self.backoff * 2**attempt)


class _Held(list[Message]):
    """An ASGI ``send`` that keeps the messages instead of sending them."""

    async def __call__(self, message: Message) -> None:
        self.append(message)


class DashboardPaths:
    """Sends optuna-dashboard's own paths to it, everything else to lrtune's routes, so lrtune
    answers 404/405 for its paths in its own error shape."""

    PREFIXES = ("/dashboard", "/api/", "/static/", "/artifacts/", "/csv/", "/favicon.ico",
                "/incompatible-rdb-schema", "/sql-profiler")

    def __init__(self, app: ASGIApp, dashboard: ASGIApp) -> None:
        self.app, self.dashboard = app, dashboard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and (path == "/" or path.startswith(self.PREFIXES)):
            await self.dashboard(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def create_app(settings: Settings | None = None, store: Store | None = None) -> FastAPI:
    settings = settings or get_settings()
    store = store or Store(settings)
    app = FastAPI(title="lrtune", version="0.1.0",
                  description="Search learning-rate schedules with Optuna. Writes need "
                              "`Authorization: Bearer <token>`.")
    app.state.settings = settings
    app.state.store = store
    app.state.telemetry = Telemetry(store)
    errors.install(app)
    reads = read_dependencies(settings)
    app.include_router(studies.router, dependencies=reads)
    app.include_router(catalogue.router, dependencies=reads)
    app.include_router(health.router)
    app.include_router(health.metrics_router, dependencies=reads)
    app.include_router(session.router)
    app.add_middleware(DashboardPaths, dashboard=dashboard_app(store, settings.closed_reads))
    app.middleware("http")(app.state.telemetry.middleware)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(RetryReads)
    return app


def dashboard_app(store: Store, closed: bool) -> DashboardGate:
    """optuna-dashboard on the store's database, behind lrtune's gate."""
    import optuna_dashboard

    artifacts = CurveArtifactStore(store.optuna_storage, store.settings.artifact_dir)
    return DashboardGate(optuna_dashboard.wsgi(store.optuna_storage, artifact_store=artifacts),
                         store, closed)
