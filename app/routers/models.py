from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query

from app.schemas import ModelInfo, ModelsResponse
from app.state import AuthDep, ModelDep, ReadAuthDep, StateDep
from model.registry import RegistryError

router = APIRouter(prefix="/v1/models", tags=["models"])


def _versions(state) -> list[dict[str, Any]]:
    store = state.manager.store
    if store is None:
        return []
    active = store.active_version()
    out = []
    for v in store.versions():
        try:
            meta = store.meta(v)
        except RegistryError:
            continue
        out.append(
            {
                "version": v,
                "name": meta.get("name"),
                "active": v == active,
                "parent": meta.get("parent"),
                "created_at": meta.get("created_at"),
                "dataset": meta.get("dataset"),
                "hyperparameters": meta.get("hyperparameters"),
                "val_map50": (meta.get("metrics") or {}).get("val_map50"),
                "head_rebuilt": meta.get("head_rebuilt"),
            }
        )
    return out


@router.get("", response_model=ModelsResponse, summary="The served model and every version")
def list_models(model: ModelDep, state: StateDep, _auth: ReadAuthDep) -> ModelsResponse:
    info = model.describe()
    if state.settings.conf_threshold is not None:
        info["conf_threshold"] = state.settings.conf_threshold
    return ModelsResponse(
        active=ModelInfo(**info),
        provider=model.detector.provider,
        versions=_versions(state),
        last_swap_error=state.manager.last_error,
    )


@router.post(
    "/{version}/activate",
    response_model=ModelInfo,
    summary="Serve this version (built and warmed first; the old one serves meanwhile)",
    responses={
        401: {"description": "API key needed"},
        404: {"description": "no such version"},
        409: {"description": "no model store"},
        422: {"description": "corrupt or mismatching model"},
    },
)
async def activate(version: int, state: StateDep, _auth: AuthDep, _model: ModelDep) -> ModelInfo:
    store = state.manager.store
    if store is None:
        raise HTTPException(409, "no model store is configured (YOLOV1_MODEL_STORE)")
    if version not in store.versions():
        raise HTTPException(404, f"model version {version} does not exist")
    try:
        served = await state.manager.activate(version)
    except Exception as exc:  # corrupt files, a bad graph, a failed warm-up
        raise HTTPException(
            422, f"model version {version} was refused, the old one keeps serving: {exc}"
        ) from exc
    return ModelInfo(**served.describe())


@router.post(
    "/prune",
    summary="Remove old versions: all but the newest `keep`, the active one and its parent",
    responses={401: {"description": "API key needed"}, 409: {"description": "no model store"}},
)
async def prune(
    state: StateDep, _auth: AuthDep, keep: Annotated[int, Query(ge=1, le=10_000)] = 5
) -> dict[str, list[int]]:
    store = state.manager.store
    if store is None:
        raise HTTPException(409, "no model store is configured (YOLOV1_MODEL_STORE)")
    removed = await asyncio.to_thread(store.prune, keep)
    return {"removed": removed, "kept": store.versions()}
