"""Load shedding: at most ``max_inflight`` requests run at once, at most ``max_queued`` more
wait, each at most ``queue_wait`` seconds; every other request is answered 503 with
``Retry-After``, after ``shed_delay`` seconds. An overloaded server so says "come back
shortly" instead of queueing work for clients that will have given up by the time it runs,
and a client that retries at once (ignoring Retry-After) is slowed down rather than flooding
the server with refusals (no thread, no database: a timer). ``/healthz`` is never held back.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Receive, Scope, Send

from lrtune_service.errors import error_response

EXEMPT = ("/healthz",)


class Admission:
    def __init__(self, app: ASGIApp, inflight: int, queued: int, wait: float,
                 delay: float = 0.0) -> None:
        self.app, self.inflight, self.queued, self.wait = app, inflight, queued, wait
        self.delay = delay
        self.waiting = 0
        self._slots: asyncio.Semaphore | None = None  # made in the server's event loop

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT:
            await self.app(scope, receive, send)
            return
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.inflight)
        slots = self._slots
        if slots.locked() and self.waiting >= self.queued:
            await self._shed(scope, receive, send)
            return
        self.waiting += 1
        try:
            await asyncio.wait_for(slots.acquire(), self.wait)
        except TimeoutError:
            await self._shed(scope, receive, send)
            return
        finally:
            self.waiting -= 1
        try:
            await self.app(scope, receive, send)
        finally:
            slots.release()

    async def _shed(self, scope: Scope, receive: Receive, send: Send) -> None:
        await asyncio.sleep(self.delay)
        await error_response(503, "overloaded", "the server is busy, retry shortly",
                             headers={"Retry-After": "1"})(scope, receive, send)
