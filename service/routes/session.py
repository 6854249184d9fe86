"""Dashboard logins: a browser trades a token for an HttpOnly, SameSite cookie.

The cookie opens reads only (the dashboard and the REST API's GETs under closed reads); every
write still needs the bearer token, so a page on another site cannot write through a logged-in
browser. It is marked ``Secure`` when the request came over HTTPS (or with
``LRTUNE_COOKIE_SECURE``); over plain HTTP anyone on the path can read it, as they could read a
token: serve lrtune behind TLS beyond localhost.
"""

from __future__ import annotations

import html
import json
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from lrtune_service.deps import SESSION_COOKIE, WORKER_ONLY, SettingsDep, StoreDep
from lrtune_service.errors import ApiError, responses

router = APIRouter(tags=["session"])
Next = Annotated[str, Query(max_length=2000, description="where to go after logging in")]
PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>lrtune login</title></head>
<body style="font-family:sans-serif;max-width:30em;margin:4em auto">
<h1>lrtune</h1><p>Paste an API token (from <code>lrtune token create</code>) to open the
dashboard. The browser keeps a login cookie; the token is not stored in it.</p>
<form method="post" action="/login?next={next}">
<input name="token" type="password" autocomplete="off" style="width:100%" autofocus>
<p><button type="submit">Log in</button></p></form></body></html>"""


def local_path(target: str) -> str:
    """``target`` if it is a path of this site, else the dashboard (no open redirect)."""
    if target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return "/dashboard/"


@router.get("/login", response_class=HTMLResponse)
def login_page(next: Next = "/dashboard/") -> HTMLResponse:
    """A form that logs a browser in with a token."""
    return HTMLResponse(PAGE.format(next=html.escape(local_path(next), quote=True)))


TOKEN_BODY = {"type": "object", "required": ["token"],
              "properties": {"token": {"type": "string", "minLength": 1, "maxLength": 500}}}
REDIRECT: dict[int | str, dict[str, Any]] = {303: {"description": "redirect", "content": {}}}


@router.post("/login", status_code=303, response_class=RedirectResponse,
             responses={**REDIRECT, **responses(401, 403, 413, 422)},
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/x-www-form-urlencoded": {"schema": TOKEN_BODY},
                 "application/json": {"schema": TOKEN_BODY}}}})
async def login(request: Request, store: StoreDep, settings: SettingsDep,
                next: Next = "/dashboard/") -> Response:
    """Log in with ``token`` (form field or JSON): sets the login cookie, then redirects."""
    body = await request.body()
    kind = request.headers.get("content-type", "")
    try:
        fields = json.loads(body) if "json" in kind else \
            {k: v[0] for k, v in parse_qs(body.decode()).items()}
        token = str(fields["token"]) if isinstance(fields, dict) else ""
    except (ValueError, KeyError, UnicodeDecodeError):
        token = ""
    if not token:
        raise ApiError(422, "invalid", "token: give the API token as the field 'token'",
                       "token")
    principal = await run_in_threadpool(store.principal, token)
    if principal is None:
        raise ApiError(401, "unauthorized", "invalid or revoked token", "token")
    if principal.is_worker:
        raise ApiError(403, "forbidden", WORKER_ONLY, "token")
    value, expires = await run_in_threadpool(store.open_session, principal)
    secure = settings.cookie_secure if settings.cookie_secure is not None else \
        request.url.scheme == "https"
    response = RedirectResponse(local_path(next), status_code=303)
    response.set_cookie(SESSION_COOKIE, value, expires=expires, path="/", secure=secure,
                        httponly=True, samesite="strict")
    return response


@router.post("/logout", status_code=303, response_class=RedirectResponse,
             responses=REDIRECT)
def logout(request: Request, store: StoreDep) -> Response:
    """End this browser's login."""
    value = request.cookies.get(SESSION_COOKIE)
    if value:
        store.close_session(value)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
