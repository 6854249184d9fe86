"""Prometheus metrics, one registry per app: requests by route and status, studies by status."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from starlette.requests import Request
from starlette.responses import Response

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

    async def middleware(self, request: Request,
                         call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "other")
        self.requests.labels(request.method, path, str(response.status_code)).inc()
        self.latency.labels(path).observe(time.perf_counter() - started)
        return response
