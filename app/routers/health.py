from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.schemas import ModelRef, Ready
from app.state import StateDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Ready,
    responses={503: {"model": Ready}},
    summary="The model is loaded and warmed up",
)
async def readyz(state: StateDep) -> Response | Ready:
    """Ready means detection and scoring work. Jobs also need Redis: ``dependencies``
    says whether it answers (while it does not, the job routes say 503)."""
    deps = {}
    if state.jobs is not None:
        deps["redis"] = "up" if await asyncio.to_thread(state.jobs.ping) else "down"
    if not state.holder.ready:
        body = Ready(status="starting", dependencies=deps)
        return JSONResponse(body.model_dump(), status_code=503)
    m = state.holder.current
    return Ready(
        status="ready",
        model=ModelRef(name=m.name, version=m.version),
        provider=m.detector.provider,
        dependencies=deps,
    )


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(state: StateDep) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
