"""Load shedding: at most ``max_inflight`` requests run at once, at most ``max_queued`` more
wait in each of two lanes, each at most ``queue_wait`` seconds; every other request is answered
503 with ``Retry-After``, after ``shed_delay`` seconds. An overloaded server so says "come back
shortly" instead of queueing work for clients that will have given up by the time it runs,
and a client that retries at once (ignoring Retry-After) is slowed down rather than flooding
the server with refusals (no thread, no database: a timer). ``/healthz`` is never held back.

Work in progress goes first: a freed turn goes to a waiting heartbeat, report, finish or hand
back of a lease before any other request, so a flood of claims and reads cannot starve
running trials of their heartbeats (a trial whose heartbeats are shed is reaped as lost and
trained again).
"""

from __future__ import annotations

import asyncio
import re
from collections import deque

from starlette.types import ASGIApp, Receive, Scope, Send

from lrtune_service.errors import error_response

EXEMPT = ("/healthz",)
IN_PROGRESS = re.compile(r"/v\d{1,9}/leases/\d{1,12}/(heartbeat|report|finish|release)")


class Admission:
    def __init__(self, app: ASGIApp, inflight: int, queued: int, wait: float,
                 delay: float = 0.0) -> None:
        self.app, self.queued, self.wait, self.delay = app, queued, wait, delay
        self.free = inflight
        self.lanes: tuple[deque[asyncio.Future[None]], ...] = (deque(), deque())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT:
            await self.app(scope, receive, send)
            return
        lane = 0 if IN_PROGRESS.fullmatch(scope["path"]) else 1
        if not await self._enter(lane):
            await self._shed(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self._leave()

    async def _enter(self, lane: int) -> bool:
        """Take a turn, waiting in ``lane`` if none is free; False when shed."""
        if self.free > 0:
            self.free -= 1
            return True
        queue = self.lanes[lane]
        if len(queue) >= self.queued:
            return False
        turn = asyncio.get_running_loop().create_future()
        queue.append(turn)
        try:
            await asyncio.wait({turn}, timeout=self.wait)
        except asyncio.CancelledError:  # the client went away
            if turn.done():
                self._leave()  # it was handed a turn meanwhile: pass it on
            else:
                queue.remove(turn)
            raise
        if turn.done():
            return True
        queue.remove(turn)
        return False

    def _leave(self) -> None:
        """Hand this turn to the first waiter (work in progress first), else free it."""
        for queue in self.lanes:
            while queue:
                turn = queue.popleft()
                if not turn.done():
                    turn.set_result(None)
                    return
        self.free += 1

    async def _shed(self, scope: Scope, receive: Receive, send: Send) -> None:
        await asyncio.sleep(self.delay)
        await error_response(503, "overloaded", "the server is busy, retry shortly",
                             headers={"Retry-After": "1"})(scope, receive, send)
