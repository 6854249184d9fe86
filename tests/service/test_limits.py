"""Request limits in process: body bytes counted on the stream, the dashboard refusing writes
and dropping the bodies of reads, the curve step cap, and /healthz off the thread pool."""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from lrtune.settings import Settings
from lrtune.store import Store
from lrtune_service.app import create_app
from lrtune_service.routes import health

TOKEN = "token-a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMIT = 4096


@pytest.fixture
def client(db_url: str) -> Iterator[TestClient]:
    settings = Settings(database_url=db_url, api_tokens=TOKEN, max_body_bytes=LIMIT,
                        max_curve_steps=1000)
    with TestClient(create_app(settings, Store(settings))) as c:
        yield c


def chunks(total: int, size: int = 1000) -> Iterator[bytes]:
    """A body of ``total`` bytes sent as chunks (no Content-Length)."""
    for start in range(0, total, size):
        yield b"x" * min(size, total - start)


def assert_too_large(response: object) -> None:
    assert response.status_code == 413  # type: ignore[attr-defined]
    error = response.json()["error"]  # type: ignore[attr-defined]
    assert error["field"] == "body" and error["code"] == "too_large"


@pytest.mark.parametrize("path", ["/studies", "/api/studies"])
def test_a_content_length_over_the_limit_is_refused(client: TestClient, path: str) -> None:
    assert_too_large(client.post(path, content=b"{}" + b" " * LIMIT, headers=AUTH))


def test_a_chunked_body_over_the_limit_is_refused(client: TestClient) -> None:
    assert_too_large(client.post("/studies", content=chunks(10 * LIMIT), headers=AUTH))
    # the dashboard refuses a write before reading a byte of its body
    r = client.post("/api/studies", content=chunks(10 * LIMIT), headers=AUTH)
    assert r.status_code == 403 and r.json()["error"]["code"] == "read_only"


def test_the_dashboard_never_parses_a_body(client: TestClient) -> None:
    """Writes are refused before their body is read; a read's body is dropped."""
    body = json.dumps({"study_name": "via-dashboard", "directions": ["minimize"]}).encode()
    r = client.post("/api/studies", content=iter([body[:10], body[10:]]),
                    headers={"content-type": "application/json"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "read_only", r.text
    r = client.request("GET", "/api/studies", content=iter([body[:10], body[10:]]))
    assert r.status_code == 200 and r.json()["study_summaries"] == []


def test_a_curve_over_the_step_cap_is_422_naming_epochs(client: TestClient) -> None:
    r = client.get("/schedules/cosine/curve", params={"epochs": 11, "steps_per_epoch": 100})
    assert r.status_code == 422 and r.json()["error"]["field"] == "epochs"
    ok = client.get("/schedules/cosine/curve", params={"epochs": 10, "steps_per_epoch": 100})
    assert ok.status_code == 200 and len(ok.json()["lr"]) == 1000
    declared = client.get("/openapi.json").json()["paths"]["/schedules/{family}/curve"]["get"]
    assert "422" in declared["responses"]


def test_healthz_runs_on_the_event_loop() -> None:
    assert inspect.iscoroutinefunction(health.healthz)
