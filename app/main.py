"""The FastAPI application: detection, loss scoring, models, health."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from app import errors
from app import kserve as kserve_schemas
from app.batching import MicroBatcher
from app.labelstudio import StudioAuth
from app.limits import BodyLimitMiddleware
from app.observability import Metrics, MetricsMiddleware
from app.requestid import RequestIdMiddleware
from app.routers import datasets, detect, health, jobs, kserve, labelstudio, loss, models
from app.routers.detect import json_body_limit
from app.schemas import DetectRequest, LossRequest
from app.serving import ModelManager
from app.settings import Settings
from app.state import AppState

log = logging.getLogger("app")
CONSOLE = Path(__file__).parent / "console"

DESCRIPTION = """
YOLOv1 (Redmon et al. 2016) as a service.

* **POST /v1/detect**: an image in, boxes, classes and scores out (ONNX Runtime).
* **POST /v1/loss**: raw predictions and labels in, the YOLOv1 loss out: the
  total, each of its five terms, per image (docs/loss.md).
* **GET /v1/models**: the served model, its metadata and execution provider.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    state = AppState(settings=settings, metrics=Metrics())
    state.manager = ModelManager(
        settings,
        state.holder,
        on_swap=lambda m: state.metrics.set_model(m.name, m.version, m.detector.provider),
    )
    if settings.labelstudio_url:
        state.studio = StudioAuth(
            settings.labelstudio_url,
            settings.labelstudio_api_key,
            timeout_s=settings.image_url_timeout_s,
        )
    if settings.redis_url:
        from jobs.store import JobStore

        state.jobs = JobStore.from_url(settings.redis_url)
        state.metrics.watch_jobs(state.jobs)

    async def load_model() -> None:
        """Build and warm the session off the event loop; /healthz answers meanwhile
        and /readyz says 503 until the model takes traffic."""
        t0 = time.perf_counter()
        try:
            version = await asyncio.to_thread(state.manager.initial_version)
            await state.manager.activate(version, persist=False)
        except Exception:
            # Fail fast: a replica without a model must not linger unready.
            log.exception("could not load the model; exiting")
            logging.shutdown()
            os._exit(3)
        log.info("ready in %.2f s", time.perf_counter() - t0)
        await state.manager.follow()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.cpu_pool = ThreadPoolExecutor(
            max(settings.decode_threads, settings.lanes), thread_name_prefix="cpu"
        )
        state.score_pool = ThreadPoolExecutor(1, thread_name_prefix="score")
        state.batcher = MicroBatcher(
            max_batch=settings.batch_max,
            wait_ms=settings.batch_wait_ms,
            on_batch=state.record_batch,
        )
        state.batcher.start()
        loading = asyncio.create_task(load_model())
        grpc_server = None
        if settings.grpc_port is not None:
            from app.grpc_v2 import server as grpc_v2

            grpc_server = grpc_v2.start(state, asyncio.get_running_loop(), version=app.version)
            log.info("KServe v2 gRPC on %s:%d", settings.host, settings.grpc_port)
        yield
        if grpc_server is not None:
            await asyncio.to_thread(lambda: grpc_server.stop(grace=2).wait())
        loading.cancel()
        await state.batcher.stop()
        state.cpu_pool.shutdown(wait=False, cancel_futures=True)
        state.score_pool.shutdown(wait=False, cancel_futures=True)

    # /docs and /redoc from assets the fastapi-offline package ships: FastAPI's default
    # pages load Swagger UI from a CDN and stay blank on a machine without internet.
    app = FastAPIOffline(
        title="yolov1-service",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        static_url="/docs-assets",
    )
    # The console: static files, no build step; everything it shows comes from the API.
    app.mount("/console", StaticFiles(directory=CONSOLE), name="console")

    @app.get("/", include_in_schema=False)
    def console() -> FileResponse:
        return FileResponse(CONSOLE / "index.html", headers={"Cache-Control": "no-cache"})

    app.state.service = state
    for r in (
        detect.router,
        loss.router,
        models.router,
        health.router,
        jobs.router,
        datasets.router,
        kserve.router,
        labelstudio.router,
    ):
        app.include_router(r)

    def openapi() -> dict:
        # /v1/loss and /v1/detect read their bodies themselves (JSON or multipart), so
        # FastAPI does not see the JSON schema: add it to the components here.
        if app.openapi_schema is None:
            spec = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            for model in (LossRequest, DetectRequest, *kserve_schemas.SCHEMAS):
                body = model.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(body.pop("$defs", {}))
                schemas[model.__name__] = body
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi

    def body_limit(path: str) -> tuple[int, str]:
        if path.startswith("/v1/datasets"):
            return settings.max_dataset_upload_bytes, "YOLOV1_MAX_DATASET_UPLOAD_MB"
        if path.startswith("/v2/"):
            return settings.max_infer_bytes, "YOLOV1_MAX_INFER_MB"
        if path.startswith(("/v1/detect", "/labelstudio/")):
            # base64 in JSON: 4/3 of the image, plus the JSON around it
            return json_body_limit(settings), "YOLOV1_MAX_UPLOAD_MB"
        if path.startswith("/v1/loss"):
            return settings.max_upload_bytes, "YOLOV1_MAX_UPLOAD_MB"
        return settings.max_json_bytes, "YOLOV1_MAX_JSON_BYTES"  # jobs, models: small JSON

    app.add_middleware(BodyLimitMiddleware, limit_for=body_limit, timeout_s=settings.body_timeout_s)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    app.add_middleware(RequestIdMiddleware)  # added last: outermost
    errors.install(app)

    return app
