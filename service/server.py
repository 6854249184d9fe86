"""The HTTP server of ``lrtune serve`` and ``lrtune dashboard``: uvicorn with a head timeout.

Per connection:

* the request head (request line and headers, at most h11's 16 KiB) must be complete within
  ``header_timeout`` seconds of connecting, or of its first byte on a kept-alive connection;
  else the connection is closed. uvicorn alone waits for it forever (uvicorn issue #157), so
  one slow client per thread, or a few thousand per process, held the server;
* an idle kept-alive connection is closed after ``keep_alive_timeout`` (uvicorn's own timer).

On SIGTERM or SIGINT the server stops accepting, gives requests in flight
``shutdown_timeout`` seconds and then cancels them. A request running in a worker thread
cannot be cancelled in Python and would keep the process alive, so ``shutdown_timeout +
EXIT_MARGIN`` seconds after the signal the process ends anyway (after ``on_stop``).

Why uvicorn with a wrapped protocol rather than hypercorn or granian: uvicorn is the server
the API was built and tested on, the missing piece is one timer on its h11 protocol class
(a documented ``Config(http=...)`` option), and everything stays in one process whose memory
the tests can read. The subclass touches uvicorn internals (``conn``, ``transport``,
``on_response_complete``), so uvicorn is pinned to the version tested and
tests/security/test_limits.py fails if the timer stops working.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import h11
import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

from lrtune.settings import Settings

log = logging.getLogger("lrtune.server")
EXIT_MARGIN = 5.0  # seconds past shutdown_timeout for cancelled requests to unwind
SWITCH_INTERVAL = 0.001  # seconds


class HeadTimeoutH11(H11Protocol):
    """uvicorn's h11 protocol that closes a connection whose request head is not complete
    within ``config.header_timeout`` seconds."""

    config: ServerConfig
    head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.watch_head()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.watch_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self.cancel_head_timer()
        super().connection_lost(exc)

    def watch_head(self) -> None:
        """Time the head while h11 waits for one; the deadline is not moved by more bytes."""
        waiting = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
        if waiting and self.head_timer is None:
            self.head_timer = self.loop.call_later(self.config.header_timeout, self.head_late)
        elif not waiting:
            self.cancel_head_timer()

    def cancel_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def head_late(self) -> None:
        self.head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            peer = f"{self.client[0]}:{self.client[1]}" if self.client else "a connection"
            log.info("closed %s: no complete request head in %.3g s", peer,
                     self.config.header_timeout)
            self.transport.close()


class ServerConfig(uvicorn.Config):
    """uvicorn's configuration plus the request-head timeout, in seconds."""

    def __init__(self, app: ASGIApp, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(app, http=HeadTimeoutH11, **kwargs)
        self.header_timeout = header_timeout


class ExitDeadline:
    """Ends the process ``seconds`` after the first stop signal if it is still there, after
    running ``on_stop`` once (here or in the main thread, whichever comes first)."""

    def __init__(self, seconds: float, on_stop: Callable[[], None]) -> None:
        self.seconds, self.on_stop = seconds, on_stop
        self.lock = threading.Lock()
        self.started = self.stopped = False

    def start(self) -> None:
        if not self.started:
            self.started = True
            threading.Thread(target=self.expire, name="lrtune-exit-deadline", daemon=True).start()

    def stop(self) -> None:
        with self.lock:  # a deadline that expires during on_stop waits for it
            if not self.stopped:
                self.stopped = True
                self.on_stop()

    def expire(self) -> None:
        time.sleep(self.seconds)
        log.error("still running %.3g s after the stop signal (requests that cannot be "
                  "cancelled): exiting", self.seconds)
        self.stop()
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stderr.flush()
        os._exit(0)


class Server(uvicorn.Server):
    """uvicorn's server whose first stop signal also starts the exit deadline."""

    def __init__(self, config: ServerConfig, deadline: ExitDeadline) -> None:
        super().__init__(config)
        self.deadline = deadline

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self.deadline.start()


def serve(app: ASGIApp, host: str, port: int, settings: Settings,
          on_stop: Callable[[], None] | None = None) -> None:
    """Serve ``app`` on ``host:port`` until SIGTERM or SIGINT; ``on_stop`` runs once the
    server has stopped (or before the process ends at the exit deadline)."""
    config = ServerConfig(app, host=host, port=port, log_level="warning",
                          header_timeout=settings.header_timeout,
                          timeout_keep_alive=settings.keep_alive_timeout,
                          timeout_graceful_shutdown=settings.shutdown_timeout)
    deadline = ExitDeadline(settings.shutdown_timeout + EXIT_MARGIN, on_stop or (lambda: None))
    # Request threads hand Python's lock over every millisecond, not every 5: the event
    # loop (accepting, /healthz, shedding) waits less behind them.
    sys.setswitchinterval(SWITCH_INTERVAL)
    # uvicorn raises the stop signal again once it has shut down: let that return quietly
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM,
                                                                     signal.SIGINT)}
    try:
        Server(config, deadline).run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        deadline.stop()
