"""What the routers share, reached through dependencies (no module globals)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from app.batching import MicroBatcher
from app.observability import Metrics
from app.serving import ModelHolder, ServedModel
from app.settings import Settings


@dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    holder: ModelHolder = field(default_factory=ModelHolder)
    batcher: MicroBatcher | None = None
    cpu_pool: ThreadPoolExecutor | None = None  # decode, preprocess, loss scoring


def get_state(request: Request) -> AppState:
    return request.app.state.service


def get_model(request: Request) -> ServedModel:
    holder = request.app.state.service.holder
    if not holder.ready:
        raise HTTPException(503, "the model is still loading; retry shortly (see /readyz)")
    return holder.current


StateDep = Annotated[AppState, Depends(get_state)]
ModelDep = Annotated[ServedModel, Depends(get_model)]
