"""Prometheus metrics, one registry per app: requests by route and status, studies by status."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lrtune.store import Store


class Telemetry:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.registry = CollectorRegistry()
        self.requests = Counter("lrtune_http_requests", "HTTP requests",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("lrtune_http_request_seconds", "HTTP request latency",
                                 ["route"], registry=self.registry)
        self.registry.register(self)

    def describe(self) -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily("lrtune_studies", "Studies by status", labels=["status"])]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily("lrtune_studies", "Studies by status", labels=["status"])
        for status, total in self.store.studies_by_status().items():
            gauge.add_metric([status], total)
        yield gauge

class Measured:
    """ASGI middleware counting requests by route and status and timing them (plain ASGI:
    Starlette's ``BaseHTTPMiddleware`` costs the event loop a task group per request)."""

    def __init__(self, app: ASGIApp, telemetry: Telemetry) -> None:
        self.app, self.telemetry = app, telemetry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def seen(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, seen)
        finally:
            path = getattr(scope.get("route"), "path", "other")
            self.telemetry.requests.labels(scope["method"], path, str(status)).inc()
            self.telemetry.latency.labels(path).observe(time.perf_counter() - started)
