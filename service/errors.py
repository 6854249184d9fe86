"""One JSON error shape for every 4xx/5xx: ``{"error": {"status", "code", "field", "message"}}``."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from lrtune.errors import Conflict, DatabaseUnavailable, NotFound, OverQuota, SpecError
from lrtune.spec import explain
from lrtune.store.leases import Forbidden, StudyEnded

log = logging.getLogger("lrtune.service")


class ErrorBody(BaseModel):
    status: int
    code: str
    field: str | None = None
    message: str


class ErrorOut(BaseModel):
    error: ErrorBody


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field


def error_response(status: int, code: str, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorOut(error=ErrorBody(status=status, code=code, field=field, message=message))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for the error codes a route can return."""
    return {code: {"model": ErrorOut} for code in codes}


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(_: Request, e: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
        return error_response(e.status, e.code, e.message, e.field, headers)

    @app.exception_handler(SpecError)
    async def _spec(_: Request, e: SpecError) -> JSONResponse:
        return error_response(422, "invalid", str(e), e.field)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {"loc": (), "msg": "invalid request"}
        field, message = explain(first)
        return error_response(422, "invalid", f"{field}: {message}", field)

    @app.exception_handler(NotFound)
    async def _missing(_: Request, e: NotFound) -> JSONResponse:
        return error_response(404, "not_found", str(e), e.field)

    @app.exception_handler(Conflict)
    async def _conflict(_: Request, e: Conflict) -> JSONResponse:
        return error_response(409, "conflict", str(e), e.field)

    @app.exception_handler(Forbidden)
    async def _forbidden(_: Request, e: Forbidden) -> JSONResponse:
        return error_response(403, "forbidden", str(e), e.field)

    @app.exception_handler(StudyEnded)
    async def _ended(_: Request, e: StudyEnded) -> JSONResponse:
        return error_response(409, "study_ended", str(e), e.field)

    @app.exception_handler(OverQuota)
    async def _quota(_: Request, e: OverQuota) -> JSONResponse:
        return error_response(429, "over_quota", str(e), e.field)

    @app.exception_handler(DatabaseUnavailable)
    async def _database(_: Request, e: DatabaseUnavailable) -> JSONResponse:
        return error_response(503, "unavailable", "database unavailable, retry shortly",
                              headers={"Retry-After": "1"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "internal", f"internal error: {type(e).__name__}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        headers = dict(e.headers or {})
        if e.status_code == 405:  # Starlette lists only the first matching route's methods
            headers["Allow"] = ", ".join(allowed_methods(request))
        return error_response(e.status_code, "http", str(e.detail), headers=headers or None)


def allowed_methods(request: Request) -> list[str]:
    """Methods the OpenAPI document declares for the request's path."""
    for pattern, methods in _path_methods(request.app):
        if pattern.fullmatch(request.url.path):
            return methods
    return []


def _path_methods(app: FastAPI) -> list[tuple[re.Pattern[str], list[str]]]:
    cached = getattr(app.state, "path_methods", None)
    if cached is None:
        cached = [(re.compile(re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(path))),
                   sorted(m.upper() for m in ops))
                  for path, ops in app.openapi()["paths"].items()]
        app.state.path_methods = cached
    return cached
