"""Prometheus metrics (one registry per app, so several apps can live in one process)."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "http_requests_total", "HTTP requests", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "HTTP request latency",
            ["route", "method"],
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10),
            registry=r,
        )
        self.inference = Histogram(
            "inference_seconds",
            "ONNX Runtime time per batch",
            buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1),
            registry=r,
        )
        self.batch_size = Histogram(
            "inference_batch_size",
            "images per ONNX Runtime call",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.images = Counter("detect_images_total", "images run through the detector", registry=r)
        self.model_info = Gauge(
            "model_info", "the served model (value 1)", ["name", "version", "provider"], registry=r
        )

    def observe_batch(self, n: int, seconds: float) -> None:
        self.batch_size.observe(n)
        self.inference.observe(seconds)
        self.images.inc(n)

    def set_model(self, name: str, version: int, provider: str) -> None:
        self.model_info.clear()
        self.model_info.labels(name=name, version=str(version), provider=provider).set(1)


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

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = route.path if route is not None else "unmatched"
            method = scope["method"]
            self.metrics.requests.labels(path, method, str(status)).inc()
            self.metrics.latency.labels(path, method).observe(time.perf_counter() - t0)
