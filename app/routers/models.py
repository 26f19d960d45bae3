from __future__ import annotations

import asyncio
import base64
import functools
import json
import os
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import StreamingResponse

from app.schemas import ModelFile, ModelInfo, ModelsResponse, ModelVersion
from app.state import AuthDep, ModelDep, ReadAuthDep, StateDep
from model.infer import sidecar_path
from model.registry import FILES, ModelStore, RegistryError

# The registry's list of a version's files, as the path parameter's allowed values.
FileName = Literal[FILES]  # type: ignore[valid-type]

router = APIRouter(prefix="/v1/models", tags=["models"])


@functools.lru_cache(maxsize=256)
def _sidecar_facts(
    onnx_path: str, created_at: float | None
) -> tuple[tuple[str, ...] | None, float | None]:
    """A registered version's classes and its training's best val mAP@0.5, from its
    sidecar; a version's files never change, so ``created_at`` tells a reused number
    apart and the answer keeps."""
    try:
        side = json.loads(sidecar_path(onnx_path).read_text())
        names = side["model_config"].get("class_names")
    except (OSError, ValueError, KeyError, AttributeError):
        return None, None
    return tuple(names or ()), side.get("best_val_map50")


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
        classes, trained_map = _sidecar_facts(str(store.onnx_path(v)), meta.get("created_at"))
        job_map = (meta.get("metrics") or {}).get("val_map50")
        out.append(
            {
                "version": v,
                "name": meta.get("name"),
                "active": v == active,
                "parent": meta.get("parent"),
                "created_at": meta.get("created_at"),
                "dataset": meta.get("dataset"),
                "hyperparameters": meta.get("hyperparameters"),
                # A job's version: its score on the job's validation split; the shipped
                # default: its training's, from its sidecar.
                "val_map50": trained_map if job_map is None else job_map,
                "head_rebuilt": meta.get("head_rebuilt"),
                "classes": classes,
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


def _store_and_meta(state, version: int) -> tuple[ModelStore, dict[str, Any]]:
    store = state.manager.store
    if store is None:
        raise HTTPException(409, "no model store is configured (YOLOV1_MODEL_STORE)")
    try:
        return store, store.meta(version)
    except RegistryError:
        raise HTTPException(404, f"model version {version} does not exist") from None


@router.get(
    "/{version}",
    response_model=ModelVersion,
    summary="One version: where it came from, what it measured, its files",
    responses={404: {"description": "no such version"}, 409: {"description": "no model store"}},
)
def get_version(version: int, state: StateDep, _auth: ReadAuthDep) -> ModelVersion:
    store, meta = _store_and_meta(state, version)
    files = []
    for name in FILES:
        try:
            size = (store.path(version) / name).stat().st_size
        except FileNotFoundError:
            continue
        url = f"/v1/models/{version}/files/{name}"
        files.append(
            ModelFile(name=name, bytes=size, sha256=meta.get("sha256", {}).get(name), url=url)
        )
    fields = {k: meta.get(k) for k in ModelVersion.model_fields}
    # A version not made by a job here (the shipped default) has its training record in
    # its sidecar only.
    try:
        side = json.loads((store.path(version) / "model.json").read_text())
    except (OSError, ValueError):
        side = {}
    fields["hyperparameters"] = fields["hyperparameters"] or side.get("train_config")
    fields["metrics"] = (
        fields["metrics"]
        or {k: side[k] for k in ("best_val_map50", "epochs_trained") if k in side}
        or None
    )
    fields.update(version=version, active=version == store.active_version(), files=files)
    return ModelVersion(**fields)


def _chunks(f, size: int = 1 << 20) -> Iterator[bytes]:
    with f:
        while chunk := f.read(size):
            yield chunk


@router.get(
    "/{version}/files/{name}",
    summary="Download one of a version's files: the ONNX model, its metadata, the checkpoint",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}},
        404: {"description": "no such version, or it has no such file (int8 is optional)"},
        409: {"description": "no model store"},
    },
)
def download(
    version: int, name: FileName, state: StateDep, _auth: ReadAuthDep
) -> StreamingResponse:
    store, meta = _store_and_meta(state, version)
    try:
        # Opened before answering: a prune that removes the version meanwhile cannot
        # cut the download short, the open file outlives its name.
        f = open(store.path(version) / name, "rb")  # noqa: SIM115 (closed by _chunks)
    except FileNotFoundError:
        raise HTTPException(404, f"model version {version} has no {name}") from None
    headers = {
        "Content-Length": str(os.fstat(f.fileno()).st_size),
        "Content-Disposition": f'attachment; filename="yolov1-v{version}-{name}"',
    }
    digest = meta.get("sha256", {}).get(name)
    if digest:
        # The recorded checksum, so a client can check what it received (RFC 9530).
        headers["ETag"] = f'"{digest}"'
        headers["Repr-Digest"] = f"sha-256=:{base64.b64encode(bytes.fromhex(digest)).decode()}:"
    media = "application/json" if name.endswith(".json") else "application/octet-stream"
    return StreamingResponse(_chunks(f), media_type=media, headers=headers)
