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


def test_work_in_progress_goes_before_waiting_claims() -> None:
    """A heartbeat that arrives after three claims is served before them (a trial whose
    heartbeats wait behind claims is reaped as lost); each lane has its own bound."""
    served: list[str] = []

    async def record(request: Request) -> JSONResponse:
        served.append(request.url.path)
        await asyncio.sleep(0.1)
        return JSONResponse({"ok": True})

    routes = [Route("/v1/leases", record, methods=["POST"]),
              Route("/v1/leases/{lease}/heartbeat", record, methods=["POST"])]
    app = Admission(Starlette(routes=routes), inflight=1, queued=3, wait=5)

    async def burst() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
            tasks = [asyncio.create_task(client.post("/v1/leases"))]
            await asyncio.sleep(0.02)
            tasks += [asyncio.create_task(client.post("/v1/leases")) for _ in range(3)]
            await asyncio.sleep(0.02)
            tasks.append(asyncio.create_task(client.post("/v1/leases/7/heartbeat")))
            await asyncio.sleep(0.02)
            tasks.append(asyncio.create_task(client.post("/v1/leases")))  # lane full: shed
            return [r.status_code for r in await asyncio.gather(*tasks)]

    codes = asyncio.run(burst())
    assert codes == [200, 200, 200, 200, 200, 503], codes
    assert served[:2] == ["/v1/leases", "/v1/leases/7/heartbeat"], served


def test_a_waiter_that_goes_away_gives_its_turn_back() -> None:
    app = Admission(Starlette(routes=[Route("/slow", slow)]), inflight=1, queued=4, wait=5)

    async def scenario() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
            first = asyncio.create_task(client.get("/slow"))
            await asyncio.sleep(0.05)
            gone = asyncio.create_task(client.get("/slow"))
            await asyncio.sleep(0.05)
            gone.cancel()
            answers = [await first]
            answers += await asyncio.gather(client.get("/slow"), client.get("/slow"))
            return [r.status_code for r in answers]

    assert asyncio.run(scenario()) == [200, 200, 200]
    assert app.free == 1 and not any(app.lanes)
