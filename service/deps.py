"""Typed dependencies: settings, store and the caller's identity."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from lrtune.settings import Settings
from lrtune.store import Store, StudyRecord
from service.errors import ApiError

bearer = HTTPBearer(auto_error=False, description="token from `lrtune token create`")


def get_store(request: Request) -> Store:
    return request.app.state.store  # type: ignore[no-any-return]


def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


StoreDep = Annotated[Store, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def require_owner(store: StoreDep, credentials: Credentials) -> str:
    if credentials is None or not credentials.credentials:
        raise ApiError(401, "unauthorized", "missing bearer token", "Authorization")
    owner = store.token_owner(credentials.credentials)
    if owner is None:
        raise ApiError(401, "unauthorized", "invalid or revoked token", "Authorization")
    return owner


Owner = Annotated[str, Depends(require_owner)]


def read_dependencies(settings: Settings) -> list[Any]:
    """Reads are open unless ``closed_reads``; only then does the schema declare the token."""
    return [Depends(require_owner)] if settings.closed_reads else []


def owned_study(store: Store, study_id: int, owner: str) -> StudyRecord:
    record = store.get_study(study_id)
    if record.owner != owner:
        raise ApiError(403, "forbidden", f"study {study_id} belongs to another token", "id")
    return record
