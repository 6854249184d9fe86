"""The API as ``lrtune serve`` runs it, plus what ``bench/api_load.py`` measures it against.

    LRTUNE_DATABASE_URL=postgresql://... taskset -c 0 python -m bench.api_server --port 8765

A thin call: ``lrtune serve --workers 0`` itself runs (its logging, signals and uvicorn
settings), with ``lrtune_service.app.create_app`` wrapped so that the app it serves also has

* ``GET /bench/row?id=N``, the bare endpoint: a plain ``def`` route, as lrtune's are (same
  thread pool, same middleware), reading one ``lrtune_studies`` row through the app's store
  engine (same connection pool): what a request costs with none of lrtune's own work in it;
* ``GET /bench/requests``, answered before the app (no middleware, no thread pool, no
  database): requests received and still being handled, per path, and the pools' state. hey's
  CSV lists answered requests only; received minus answered counts the ones it gave up on,
  and ``active`` tells when the server has drained between runs.

``LRTUNE_BENCH_SQL=1`` also counts SQL statements and their time per path (every engine
of the process; off under load: it costs a few microseconds per statement).
"""

from __future__ import annotations

import contextvars
import os
import sys
import time
from collections import Counter
from typing import Any

import anyio.to_thread
import sqlalchemy as sa
from fastapi import FastAPI
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

BARE = "/bench/row"
REQUESTS = "/bench/requests"
ROW = sa.text("SELECT id, name, status FROM lrtune_studies WHERE id = :id")
_path: contextvars.ContextVar[str] = contextvars.ContextVar("bench_path", default="other")


def add_bare_route(app: FastAPI) -> None:
    """The bare endpoint, on the app's store engine (the pool every route uses)."""
    engine = app.state.store.engine

    @app.get(BARE, include_in_schema=False)
    def bare(id: int = 1) -> dict[str, Any]:  # noqa: A002 - the query parameter's name
        with engine.connect() as conn:
            row = conn.execute(ROW, {"id": id}).first()
        return {"id": row.id, "name": row.name, "status": row.status} if row else {}


class Requests:
    """Counts requests per path around the whole app and answers ``/bench/requests``."""

    def __init__(self, app: ASGIApp, engines: dict[str, sa.Engine]) -> None:
        self.app, self.engines = app, engines
        self.received: Counter[str] = Counter()
        self.active: Counter[str] = Counter()
        self.statements: Counter[str] = Counter()
        self.sql_s: Counter[str] = Counter()
        if os.environ.get("LRTUNE_BENCH_SQL") == "1":
            sa.event.listen(sa.engine.Engine, "before_cursor_execute", self._before)
            sa.event.listen(sa.engine.Engine, "after_cursor_execute", self._after)

    def _before(self, conn: Any, *_: Any) -> None:
        conn.info["bench_t"] = time.perf_counter()

    def _after(self, conn: Any, *_: Any) -> None:
        path = _path.get()
        self.statements[path] += 1
        self.sql_s[path] += time.perf_counter() - conn.info.pop("bench_t", time.perf_counter())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path == REQUESTS:
            await self.report()(scope, receive, send)
            return
        self.received[path] += 1
        self.active[path] += 1
        _path.set(path)  # copied into the thread pool's context with the request
        try:
            await self.app(scope, receive, send)
        finally:
            self.active[path] -= 1

    def report(self) -> JSONResponse:
        pools = {name: engine.pool.status() for name, engine in self.engines.items()}
        limiter = anyio.to_thread.current_default_thread_limiter()
        return JSONResponse({
            "received": self.received, "active": +self.active, "statements": self.statements,
            "sql_s": self.sql_s, "pools": pools, "threads": limiter.total_tokens,
            "threads_busy": limiter.borrowed_tokens})


def main() -> None:
    import lrtune_service.app
    from lrtune.cli import app as cli

    create_app = lrtune_service.app.create_app

    def create_app_with_bench(*args: Any, **kwargs: Any) -> Any:
        app = create_app(*args, **kwargs)
        add_bare_route(app)
        store = app.state.store
        return Requests(app, {"store": store.engine,
                              "optuna": store.optuna_storage.engine})

    lrtune_service.app.create_app = create_app_with_bench  # serve imports it when it runs
    cli(args=["serve", *sys.argv[1:]], prog_name="lrtune")


if __name__ == "__main__":
    main()
