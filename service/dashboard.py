"""optuna-dashboard behind lrtune's gate: read-only, closed reads by login, safe artifacts.

optuna-dashboard has no authentication and a JSON API full of writes (create, rename, delete
studies; tell trials; user attributes; notes; preferences; artifact uploads; even a schema
migration). Nobody may change through it what they could not change through lrtune's REST
API, and the REST API offers none of those writes: so every write route is refused, for
everyone. ``ROUTES`` decides each route optuna-dashboard has, by its own route table; a route
it adds in a future release is refused until it is decided here (a test lists the app's routes
and fails on any missing). Requests are classified by optuna-dashboard's own router, so what
is decided here is what bottle would dispatch.

Under closed reads a caller needs a bearer token or the login cookie (``POST /login``); a
browser without either is sent to ``/login``. Artifacts are never served as active content:
anything but a raster image is sent as an attachment, and every artifact response forbids
sniffing and scripts.
"""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import quote

import bottle
from a2wsgi import WSGIMiddleware
from starlette.concurrency import run_in_threadpool
from starlette.responses import RedirectResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lrtune.store import Principal, Store
from lrtune_service.deps import SESSION_COOKIE
from lrtune_service.errors import error_response

READ = None
# Each route of optuna-dashboard 0.21 (method, bottle rule): READ, or why it is refused.
ROUTES: dict[tuple[str, str], str | None] = {
    ("GET", "/"): READ,
    ("GET", "/dashboard<:re:(/.*)?>"): READ,
    ("GET", "/api/meta"): READ,
    ("GET", "/api/studies"): READ,
    ("GET", "/api/studies/<study_id:int>"): READ,
    ("GET", "/api/studies/<study_id:int>/param_importances"): READ,
    ("GET", "/api/studies/<study_id:int>/plot/<plot_type>"): READ,
    ("GET", "/csv/<study_id:int>"): READ,
    ("GET", "/favicon.ico"): READ,
    ("GET", "/static/<filename:path>"): READ,
    ("GET", "/incompatible-rdb-schema"): READ,
    ("GET", "/artifacts/<study_id:int>/<artifact_id:re:[0-9a-fA-F-]+>"): READ,
    ("GET", "/artifacts/<study_id:int>/<trial_id:int>/<artifact_id:re:[0-9a-fA-F-]+>"): READ,
    ("POST", "/api/studies"): "create studies with POST /studies",
    ("POST", "/api/studies/<study_id:int>/rename"): "a study's name is fixed in lrtune",
    ("DELETE", "/api/studies/<study_id:int>"): "delete studies with DELETE /studies/{id}",
    ("PUT", "/api/studies/<study_id:int>/note"): "lrtune writes the study's note itself",
    ("POST", "/api/studies/<study_id:int>/preference"): "lrtune's studies take no "
    "preferences",
    ("PUT", "/api/studies/<study_id:int>/preference_feedback_component"): "lrtune's studies "
    "take no preferences",
    ("DELETE", "/api/studies/<study_id:int>/preference/<history_id>"): "lrtune's studies "
    "take no preferences",
    ("POST", "/api/studies/<study_id:int>/preference/<history_id>"): "lrtune's studies take "
    "no preferences",
    ("POST", "/api/trials/<trial_id:int>/tell"): "only workers finish trials",
    ("POST", "/api/trials/<trial_id:int>/user-attrs"): "trial attributes are written by "
    "workers",
    ("POST", "/api/studies/<study_id:int>/<trial_id:int>/skip"): "only workers finish trials",
    ("PUT", "/api/studies/<study_id:int>/<trial_id:int>/note"): "trial notes are not "
    "writable here",
    ("POST", "/incompatible-rdb-schema"): "the schema is migrated with `lrtune migrate`",
    ("POST", "/api/artifacts/<study_id:int>/<trial_id:int>"): "artifacts are not uploaded "
    "here",
    ("POST", "/api/artifacts/<study_id:int>"): "artifacts are not uploaded here",
    ("DELETE", "/api/artifacts/<study_id:int>/<trial_id:int>/<artifact_id:re:[0-9a-fA-F-]+>"):
    "artifacts are not deleted here",
    ("DELETE", "/api/artifacts/<study_id:int>/<artifact_id:re:[0-9a-fA-F-]+>"): "artifacts "
    "are not deleted here",
    ("POST", "/api/llm/trial_filter_query"): "no language model is configured",
    ("POST", "/api/llm/generate_plotly_graph_query"): "no language model is configured",
    ("POST", "/api/llm/re_generate_plotly_graph_query"): "no language model is configured",
}
UNDECIDED = "this dashboard route is not enabled in lrtune"
PUBLIC = ("/static/", "/favicon.ico")  # the dashboard's own code and icon: no data
SAFE_IMAGES = (b"image/png", b"image/jpeg", b"image/gif", b"image/webp")
ARTIFACT_HEADERS = [(b"x-content-type-options", b"nosniff"),
                    (b"content-security-policy", b"sandbox; default-src 'none'")]


def header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers") or []:
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return ""


def cookie(scope: Scope, name: str) -> str:
    for part in header(scope, b"cookie").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return ""


def caller(store: Store, scope: Scope) -> Principal | None:
    """The owner principal of a bearer token or a login cookie on the request, or None (a
    worker token reads nothing: it claims and reports trials only)."""
    auth = header(scope, b"authorization")
    session = cookie(scope, SESSION_COOKIE)
    if auth.startswith("Bearer ") and auth[7:].strip():
        principal = store.principal(auth[7:].strip())
    else:
        principal = store.session_principal(session) if session else None
    return None if principal is None or principal.is_worker else principal


class DashboardGate:
    """ASGI: optuna-dashboard's WSGI app, read-only, with closed reads and safe artifacts."""

    def __init__(self, dashboard: bottle.Bottle, store: Store, closed: bool) -> None:
        dashboard.catchall = False  # errors reach the gate, not bottle's own 500 page
        self.router = dashboard.router
        # a2wsgi types the ASGI protocol with TypedDicts, Starlette with mappings: same calls
        self.app = cast(ASGIApp, WSGIMiddleware(dashboard))
        self.store, self.closed = store, closed

    def decision(self, method: str, path: str) -> str | None:
        """READ, or why the request is refused."""
        environ = {"REQUEST_METHOD": method, "PATH_INFO": path}
        try:
            route, _ = self.router.match(environ)
        except bottle.HTTPError:  # no such route: reads get bottle's 404
            return READ if method in ("GET", "HEAD") else UNDECIDED
        return ROUTES.get((route.method, route.rule), UNDECIDED)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        refused = self.decision(method, path)
        if refused is not READ:  # closing: its body, if any, is never read
            await error_response(403, "read_only", f"the dashboard is read-only: {refused}",
                                 "method", {"Connection": "close"})(scope, receive, send)
            return
        if self.closed and not path.startswith(PUBLIC) and \
                await run_in_threadpool(caller, self.store, scope) is None:
            await self._unauthorized(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(_without_body(scope), _no_body, _safe_artifacts(tracked, path))
        except KeyError:  # Optuna's "Record does not exist": an id of no study or trial
            if started:
                raise
            await error_response(404, "not_found", "no such study, trial or artifact",
                                 "id")(scope, receive, send)

    @staticmethod
    async def _unauthorized(scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if path.startswith(("/api/", "/artifacts/", "/csv/")):
            await error_response(401, "unauthorized", "log in at /login or send a bearer "
                                 "token", "Authorization",
                                 {"WWW-Authenticate": "Bearer"})(scope, receive, send)
            return
        query = scope.get("query_string", b"").decode("latin-1")
        target = path + (f"?{query}" if query else "")
        await RedirectResponse(f"/login?next={quote(target, safe='')}", 303)(
            scope, receive, send)


def _without_body(scope: Scope) -> Scope:
    """A read's scope without body headers: bottle never parses a body's framing. Without
    ``Accept-Encoding`` it says ``identity``: the dashboard's static files read the header
    and fail on a request that has none (a probe, a proxy)."""
    headers = [(k, v) for k, v in scope.get("headers") or []
               if k.lower() not in (b"content-length", b"transfer-encoding")]
    if not any(k.lower() == b"accept-encoding" for k, _ in headers):
        headers.append((b"accept-encoding", b"identity"))
    return {**scope, "headers": headers}


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def _safe_artifacts(send: Send, path: str) -> Send:
    if not path.startswith("/artifacts/"):
        return send

    async def guarded(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers: list[Any] = [(k, v) for k, v in message.get("headers", [])
                                  if k.lower() not in (b"x-content-type-options",
                                                       b"content-security-policy")]
            kind = next((v for k, v in headers if k.lower() == b"content-type"), b"")
            if kind.split(b";")[0].strip().lower() not in SAFE_IMAGES:
                headers = [(k, v) for k, v in headers
                           if k.lower() not in (b"content-type", b"content-disposition")]
                headers += [(b"content-type", b"application/octet-stream"),
                            (b"content-disposition", b"attachment")]
            message = {**message, "headers": headers + ARTIFACT_HEADERS}
        await send(message)

    return guarded
