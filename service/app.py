"""The FastAPI application, with optuna-dashboard served beside it on the same database.

optuna-dashboard uses absolute paths (``/dashboard``, ``/api``, ``/static``, …) and breaks
under a sub-path mount, so those paths go to it unchanged and lrtune's own paths never start
with them.
"""

from __future__ import annotations

import asyncio
from typing import Any

import optuna
from a2wsgi import WSGIMiddleware
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lrtune.dashboard import CurveArtifactStore
from lrtune.settings import Settings, get_settings
from lrtune.store import Store, optuna_url
from service import errors
from service.deps import read_dependencies
from service.errors import error_response
from service.routes import catalogue, health, studies
from service.telemetry import Telemetry


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


class WholeBody:
    """Reads the request body first (at most ``limit`` bytes) and hands it on in one piece,
    with a Content-Length and without Transfer-Encoding.

    For WSGI apps behind a2wsgi: a2wsgi passes ``Transfer-Encoding: chunked`` on although the
    ASGI server has decoded the framing already, and bottle (optuna-dashboard) then parses the
    body again as chunks, byte by byte. Reading it here also keeps a slow upload from holding
    one of a2wsgi's threads.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left (or BodyLimit refused the body): nobody to answer
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await too_large(self.limit)(scope, receive, send)
                return
            more = message.get("more_body", False)
        headers = [(k, v) for k, v in scope.get("headers") or []
                   if k not in (b"transfer-encoding", b"content-length")]
        if size or len(headers) != len(scope.get("headers") or []):
            headers.append((b"content-length", str(size).encode()))
        whole: Message | None = {"type": "http.request", "body": b"".join(chunks),
                                 "more_body": False}

        async def replay() -> Message:
            nonlocal whole
            if whole is None:
                return await receive()  # only http.disconnect is left to come
            message, whole = whole, None
            return message

        await self.app({**scope, "headers": headers}, replay, send)


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


class TokenGate:
    """Closes the mounted dashboard behind the API's bearer tokens when reads are closed."""

    def __init__(self, app: ASGIApp, store: Store) -> None:
        self.app, self.store = app, store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            auth = dict(scope.get("headers") or []).get(b"authorization", b"").decode()
            token = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else ""
            if not token or self.store.token_owner(token) is None:
                response = error_response(401, "unauthorized", "missing or invalid bearer token",
                                          "Authorization", {"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


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
    dashboard = dashboard_app(store.optuna_storage, settings)
    if settings.closed_reads:
        dashboard = TokenGate(dashboard, store)
    app.add_middleware(DashboardPaths, dashboard=dashboard)
    app.middleware("http")(app.state.telemetry.middleware)
    app.add_middleware(RetryReads)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)  # outermost: sees every byte
    return app


def dashboard_app(storage: optuna.storages.BaseStorage, settings: Settings) -> ASGIApp:
    """optuna-dashboard on ``storage`` with lrtune's curve artifacts, as an ASGI app: the one
    place it is built, for the mounted and the standalone dashboard alike."""
    import optuna_dashboard

    artifacts = CurveArtifactStore(storage, settings.artifact_dir)
    wsgi: Any = optuna_dashboard.wsgi(storage, artifact_store=artifacts)
    bridge: Any = WSGIMiddleware(wsgi)  # a2wsgi types its scopes narrower than Starlette's
    return WholeBody(bridge, settings.max_body_bytes)


def standalone_dashboard(settings: Settings) -> ASGIApp:
    """What ``lrtune dashboard`` serves: the dashboard alone, its bodies limited as the API's."""
    storage = optuna.storages.RDBStorage(optuna_url(settings.database_url))
    return BodyLimit(dashboard_app(storage, settings), settings.max_body_bytes)
