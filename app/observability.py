"""Prometheus metrics, one registry per app (several apps can live in one process).

Every series is listed, with its labels and meaning, in docs/metrics.md; names carry
the ``yolov1_`` prefix and their unit (``_seconds``, ``_total``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("app.metrics")

# A `_created` timestamp beside every counter and histogram doubles the series and
# no dashboard here reads them.
disable_created_metrics()

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
MODEL_LABELS = ("model", "version")


def status_class(code: int) -> str:
    return f"{code // 100}xx"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "yolov1_http_requests_total",
            "HTTP requests by route, method, status code and status class",
            ["route", "method", "code", "status_class"],
            registry=r,
        )
        self.latency = Histogram(
            "yolov1_http_request_duration_seconds",
            "HTTP request latency, first byte in to last byte out",
            ["route", "method"],
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10),
            registry=r,
        )
        self.in_flight = Gauge(
            "yolov1_http_requests_in_flight", "HTTP requests being served now", registry=r
        )
        self.inference = Histogram(
            "yolov1_inference_seconds",
            "ONNX Runtime time per batch",
            MODEL_LABELS,
            buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1),
            registry=r,
        )
        self.queue = Histogram(
            "yolov1_inference_queue_seconds",
            "time an image waited for its batch to start",
            MODEL_LABELS,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5),
            registry=r,
        )
        self.batch_size = Histogram(
            "yolov1_inference_batch_size",
            "images per ONNX Runtime call",
            MODEL_LABELS,
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.images = Counter(
            "yolov1_detect_images_total",
            "images run through the detector",
            MODEL_LABELS,
            registry=r,
        )
        self.scored = Counter(
            "yolov1_loss_images_total", "images scored by the loss endpoint", registry=r
        )
        self.model_info = Gauge(
            "yolov1_model_info",
            "the served model (value 1)",
            ["model", "version", "provider"],
            registry=r,
        )

    def observe_batch(self, model: Any, seconds: float, waits: list[float]) -> None:
        """One ONNX Runtime call over ``len(waits)`` images, each having waited ``waits[i]``."""
        labels = (model.name, str(model.version))
        self.batch_size.labels(*labels).observe(len(waits))
        self.inference.labels(*labels).observe(seconds)
        self.images.labels(*labels).inc(len(waits))
        queue = self.queue.labels(*labels)
        for w in waits:
            queue.observe(w)

    def set_model(self, name: str, version: int, provider: str) -> None:
        self.model_info.clear()
        self.model_info.labels(model=name, version=str(version), provider=provider).set(1)

    def watch_jobs(self, jobs: Any) -> None:
        """Job counts and training throughput, read from Redis at each scrape."""
        self.registry.register(JobsCollector(jobs.counts))


class JobsCollector(Collector):
    """Reads the job store when scraped: the numbers live in Redis, written by the
    workers, so every API replica reports the same and none keeps a copy."""

    def __init__(self, counts: Callable[[], dict[str, Any]]) -> None:
        self.counts = counts

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())  # unchecked: the names do not collide with the registry's own

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("yolov1_redis_up", "1 when the job store's Redis answered")
        try:
            c = self.counts()
        except Exception as exc:  # a scrape must not fail because Redis is away
            log.warning("job metrics unavailable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        jobs = GaugeMetricFamily("yolov1_jobs", "jobs by status", labels=["status"])
        for status in JOB_STATUSES:
            jobs.add_metric([status], c["by_status"].get(status, 0))
        yield jobs
        rate = GaugeMetricFamily(
            "yolov1_training_images_per_second",
            "training throughput of the jobs running on each worker, recent",
            labels=["worker"],
        )
        for worker, ips in sorted(c["images_per_s"].items()):
            rate.add_metric([worker], ips)
        yield rate


class MetricsMiddleware:
    """Requests and latency by route and status, as a plain ASGI middleware (a
    BaseHTTPMiddleware would cost every request an extra task and copy)."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def send_wrapper(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight.dec()
            route = scope.get("route")
            # The route's template, not the path: ids in paths would make a series each.
            path = route.path if route is not None else "unmatched"
            method = scope["method"]
            self.metrics.requests.labels(path, method, str(status), status_class(status)).inc()
            self.metrics.latency.labels(path, method).observe(time.perf_counter() - t0)
