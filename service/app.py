"""The FastAPI application, with optuna-dashboard served beside it on the same database.

optuna-dashboard uses absolute paths (``/dashboard``, ``/api``, ``/static``, …) and breaks
under a sub-path mount, so those paths go to it unchanged and lrtune's own paths never start
with them.
"""

from __future__ import annotations

import asyncio
import re

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lrtune.dashboard import CurveArtifactStore
from lrtune.settings import Settings, get_settings
from lrtune.store import Store
from lrtune_service import errors
from lrtune_service.admission import Admission
from lrtune_service.dashboard import DashboardGate
from lrtune_service.deps import read_dependencies
from lrtune_service.errors import error_response
from lrtune_service.lease_schemas import PROTOCOL
from lrtune_service.routes import catalogue, health, leases, session, studies
from lrtune_service.telemetry import Measured, Telemetry
from lrtune_service.workers import WorkerPool


class BodyLimit:
    """Refuses request bodies over ``limit`` bytes with 413, counted on the byte stream.

    A Content-Length over the limit is refused before any body byte is read. A chunked (or any
    other) body is counted as it arrives: once past the limit the 413 goes out at once with
    ``Connection: close``, so the server stops reading the rest, the app is told the client
    left (``http.disconnect``) and whatever it answers is dropped.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await too_large(self.limit)(scope, receive, send)
            return
        received = 0
        started = refused = False

        async def counted() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    refused = True
                    if not started:
                        await too_large(self.limit)(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if refused:  # the 413 has gone out instead (or the connection is to close)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not refused:
                raise
            # the app failed on the body it was refused; its request is answered already


def too_large(limit: int) -> JSONResponse:
    """The 413 answer; it closes the connection so that the rest of the body is not read."""
    return error_response(413, "too_large", f"request body over {limit} bytes", "body",
                          {"Connection": "close"})


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


class ProtocolVersion:
    """Paths of another lease-protocol version (``/v2/…``) get a 404 that says which one this
    server speaks, instead of a bare "not found"."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = re.match(r"/v(\d{1,9})(/|$)", scope.get("path", "")) \
            if scope["type"] == "http" else None
        if found is None or int(found.group(1)) == PROTOCOL:
            await self.app(scope, receive, send)
            return
        await error_response(
            404, "protocol_version", f"this server speaks the trial-lease protocol v{PROTOCOL} "
            f"(paths /v{PROTOCOL}/…), not v{found.group(1)}: use an lrtune client of the "
            "server's version", "path")(scope, receive, send)


def create_app(settings: Settings | None = None, store: Store | None = None,
               workers: WorkerPool | None = None) -> FastAPI:
    """The API; ``workers``, the local workers ``/readyz`` reports (``serve --workers``)."""
    settings = settings or get_settings()
    store = store or Store(settings)
    app = FastAPI(title="lrtune", version="0.1.0",
                  description="Search learning-rate schedules with Optuna. Writes need "
                              "`Authorization: Bearer <token>`.")
    app.state.settings = settings
    app.state.store = store
    app.state.workers = workers
    app.state.telemetry = Telemetry(store)
    errors.install(app)
    reads = read_dependencies(settings)
    app.include_router(studies.router, dependencies=reads)
    app.include_router(catalogue.router, dependencies=reads)
    app.include_router(health.router)
    app.include_router(health.metrics_router, dependencies=reads)
    app.include_router(session.router)
    app.include_router(leases.router)
    app.add_middleware(DashboardPaths, dashboard=dashboard_app(store, settings))
    app.add_middleware(ProtocolVersion)
    app.add_middleware(Measured, telemetry=app.state.telemetry)
    app.add_middleware(RetryReads)
    app.add_middleware(Admission, inflight=settings.max_inflight, queued=settings.max_queued,
                       wait=settings.queue_wait, delay=settings.shed_delay)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)  # outermost: sees every byte
    return app


def dashboard_app(store: Store, settings: Settings) -> DashboardGate:
    """optuna-dashboard on the store's database with lrtune's curve artifacts, behind lrtune's
    gate (service/dashboard.py): the one place it is built, for the mounted and the
    standalone dashboard alike. The gate refuses every write and hands reads on without a
    body, so bottle never parses a body's framing."""
    import optuna_dashboard

    artifacts = CurveArtifactStore(store.optuna_storage, settings.artifact_dir)
    return DashboardGate(optuna_dashboard.wsgi(store.optuna_storage, artifact_store=artifacts),
                         store, settings.closed_reads)


def standalone_dashboard(settings: Settings, store: Store | None = None) -> FastAPI:
    """What ``lrtune dashboard`` serves: the gated dashboard with the login page and the
    health probes, its bodies limited as the API's."""
    store = store or Store(settings)
    app = FastAPI(title="lrtune dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings
    app.state.store = store
    errors.install(app)
    app.include_router(health.router)
    app.include_router(session.router)
    app.add_middleware(DashboardPaths, dashboard=dashboard_app(store, settings))
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    return app
