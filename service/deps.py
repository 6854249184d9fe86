"""Typed dependencies: settings, store and the caller's identity."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer

from lrtune.settings import Settings
from lrtune.store import Principal, Store, StudyRecord
from lrtune_service.errors import ApiError

SESSION_COOKIE = "lrtune_session"
bearer = HTTPBearer(auto_error=False, description="token from `lrtune token create`")
session_cookie = APIKeyCookie(name=SESSION_COOKIE, auto_error=False,
                              description="dashboard login (POST /login); reads only")


# async: read from the app's state, not worth a hop to the thread pool per request
async def get_store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


StoreDep = Annotated[Store, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
Session = Annotated[str | None, Depends(session_cookie)]


def require_principal(store: StoreDep, credentials: Credentials) -> Principal:
    """The caller of a write: a bearer token only (a cookie would invite cross-site writes)."""
    if credentials is None or not credentials.credentials:
        raise ApiError(401, "unauthorized", "missing bearer token", "Authorization")
    principal = store.principal(credentials.credentials)
    if principal is None:
        raise ApiError(401, "unauthorized", "invalid or revoked token", "Authorization")
    return principal


WORKER_ONLY = ("worker tokens may only claim and report trials (the /v1/ lease routes); "
               "use an owner token (`lrtune token create`)")


def require_owner(principal: Annotated[Principal, Depends(require_principal)]) -> Principal:
    """The caller of a write to studies: an owner token; a worker token is refused."""
    if principal.is_worker:
        raise ApiError(403, "forbidden", WORKER_ONLY, "Authorization")
    return principal


Caller = Annotated[Principal, Depends(require_owner)]
Leaser = Annotated[Principal, Depends(require_principal)]  # owner or worker: the lease routes


def require_reader(store: StoreDep, credentials: Credentials, session: Session) -> Principal:
    """The caller of a read under closed reads: a bearer token or a dashboard login."""
    if credentials is not None and credentials.credentials:
        return require_owner(require_principal(store, credentials))
    principal = store.session_principal(session) if session else None
    if principal is None:
        raise ApiError(401, "unauthorized", "missing bearer token or login", "Authorization")
    return principal


def read_dependencies(settings: Settings) -> list[Any]:
    """Reads are open unless ``closed_reads``; only then does the schema declare the token."""
    return [Depends(require_reader)] if settings.closed_reads else []


def owned_study(store: Store, study_id: int, caller: Principal) -> StudyRecord:
    record = store.get_study(study_id)
    if record.owner != caller.public_id:
        raise ApiError(403, "forbidden", f"study {study_id} belongs to another principal",
                       "id")
    return record
