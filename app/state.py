"""What the routers share, reached through dependencies (no module globals)."""

from __future__ import annotations

import base64
import hmac
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from app.batching import MicroBatcher
from app.labelstudio import StudioAuth
from app.observability import Metrics
from app.serving import ModelHolder, ModelManager, ServedModel
from app.settings import Settings
from app.statistics import InferenceStatistics
from jobs.store import JobStore


@dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    holder: ModelHolder = field(default_factory=ModelHolder)
    batcher: MicroBatcher | None = None
    cpu_pool: ThreadPoolExecutor | None = None  # decode, preprocess
    # Scoring has a thread of its own: a heavy request waits for it, detection does not.
    score_pool: ThreadPoolExecutor | None = None
    manager: ModelManager | None = None
    jobs: JobStore | None = None  # Redis-backed job and data set records
    studio: StudioAuth | None = None  # signs in to Label Studio (YOLOV1_LABELSTUDIO_URL)
    stats: InferenceStatistics = field(default_factory=InferenceStatistics)  # /v2 .../stats

    def record_batch(self, model: ServedModel, seconds: float, waits: list[float]) -> None:
        """One ONNX Runtime call over ``len(waits)`` images (each having waited
        ``waits[i]``), counted for Prometheus and for Triton's statistics alike."""
        self.metrics.observe_batch(model, seconds, waits)
        self.stats.executed(model.version, seconds, len(waits))


# Dependencies are async on purpose: FastAPI runs a plain ``def`` dependency in its
# thread pool, a thread hop per dependency per request for a dictionary lookup.
async def get_state(request: Request) -> AppState:
    return request.app.state.service


async def get_model(request: Request) -> ServedModel:
    holder = request.app.state.service.holder
    if not holder.ready:
        raise HTTPException(503, "the model is still loading; retry shortly (see /readyz)")
    return holder.current


StateDep = Annotated[AppState, Depends(get_state)]
ModelDep = Annotated[ServedModel, Depends(get_model)]


async def get_jobs(request: Request) -> JobStore:
    jobs = request.app.state.service.jobs
    if jobs is None:
        raise HTTPException(503, "jobs need Redis: set YOLOV1_REDIS_URL (make run does)")
    return jobs


def presents_key(request: Request, keys: list[str], *, basic: bool = False) -> bool:
    """Does the request carry one of ``keys`` as ``Authorization: Bearer <key>`` (or, with
    ``basic``, as the password of Basic authentication, which is what Label Studio's
    model connection can send)?"""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        given = token
    elif basic and scheme.lower() == "basic":
        try:
            given = base64.b64decode(token, validate=True).decode().partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return False
    else:
        return False
    # Bytes: compare_digest refuses str with non-ASCII characters (a 500 otherwise).
    raw = given.encode("utf-8", "surrogateescape")
    return any(hmac.compare_digest(raw, k.encode("utf-8")) for k in keys)


async def require_key(request: Request) -> None:
    """Mutating endpoints need ``Authorization: Bearer <key>`` when API keys are set."""
    keys = request.app.state.service.settings.api_keys
    if keys and not presents_key(request, keys):
        raise HTTPException(
            401,
            "missing or invalid API key (Authorization: Bearer <key>)",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def require_key_to_read(request: Request) -> None:
    """Reads (jobs, models) need the key too when ``YOLOV1_PROTECT_READS`` is set."""
    if request.app.state.service.settings.protect_reads:
        await require_key(request)


JobsDep = Annotated[JobStore, Depends(get_jobs)]
AuthDep = Annotated[None, Depends(require_key)]
ReadAuthDep = Annotated[None, Depends(require_key_to_read)]
