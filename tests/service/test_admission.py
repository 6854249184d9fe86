"""Load shedding: past the in-flight and queue bounds a request is answered 503 at once."""

from __future__ import annotations

import asyncio

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from lrtune_service.admission import Admission


async def slow(_: Request) -> JSONResponse:
    await asyncio.sleep(0.5)
    return JSONResponse({"ok": True})


async def healthz(_: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


def test_requests_past_the_bounds_are_shed_and_healthz_is_not() -> None:
    app = Admission(Starlette(routes=[Route("/slow", slow), Route("/healthz", healthz)]),
                    inflight=2, queued=2, wait=0.2)

    async def burst() -> tuple[list[httpx.Response], httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
            requests = [asyncio.create_task(client.get("/slow")) for _ in range(8)]
            await asyncio.sleep(0.05)
            health = await client.get("/healthz")
            return list(await asyncio.gather(*requests)), health

    answers, health = asyncio.run(burst())
    codes = sorted(r.status_code for r in answers)
    assert codes.count(200) == 2 and codes.count(503) == 6, codes  # 2 ran; the queue timed out
    shed = next(r for r in answers if r.status_code == 503)
    assert shed.headers["retry-after"] == "1" and shed.json()["error"]["code"] == "overloaded"
    assert health.status_code == 200
