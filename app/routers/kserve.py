"""KServe v2 / Open Inference Protocol routes (``app.kserve`` has the wire format).
Errors are ``{"error": message}``, as the protocol and its clients expect."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Header, HTTPException, Request, Response
from fastapi.responses import JSONResponse

from app import kserve
from app.detection import prepare
from app.errors import STATUS, input_status
from app.kserve import MODEL_NAME, ProtocolError
from app.serving import ServedModel
from app.state import AppState, StateDep

router = APIRouter(prefix="/v2", tags=["kserve v2"])
STATUS_TYPES = tuple(t for t, _ in STATUS)

ERROR = {
    "description": '{"error": message}',
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/InferenceError"}}},
}
MAX_ELEMENTS = 64 * 3 * 1024 * 1024  # a batch of 64 at 1024 x 1024


def _error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _version(version: str | None) -> int | None:
    if version is None:
        return None
    if not (version.isascii() and version.isdigit()) or len(version) > 9:
        raise ProtocolError(f"model version {version!r} is not a version number", 404)
    return int(version)


async def _model(state: AppState, name: str, version: str | None) -> ServedModel:
    if name != MODEL_NAME:
        raise ProtocolError(f"unknown model {name!r}; this server serves {MODEL_NAME!r}", 404)
    if not state.holder.ready:
        raise ProtocolError("the model is still loading", 503)
    v = _version(version)
    try:
        return await state.manager.model_for(v)
    except KeyError:
        raise ProtocolError(f"model {name!r} has no version {version}", 404) from None


@router.get("", summary="Server metadata", response_model=kserve.ServerMetadata)
def server_metadata(request: Request) -> dict[str, Any]:
    return {
        "name": "yolov1-service",
        "version": request.app.version,
        "extensions": ["binary_tensor_data"],
    }


@router.get("/health/live", summary="Server liveness (200: live)")
def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", summary="Server readiness (200: ready, 400: not yet)")
def ready(state: StateDep) -> JSONResponse:
    return JSONResponse(
        {"ready": state.holder.ready}, status_code=200 if state.holder.ready else 400
    )


@router.get(
    "/models/{name}",
    summary="Model metadata",
    response_model=kserve.ModelMetadata,
    responses={404: ERROR},
)
@router.get(
    "/models/{name}/versions/{version}",
    summary="Model version metadata",
    response_model=kserve.ModelMetadata,
    responses={404: ERROR},
)
async def model_metadata(state: StateDep, name: str, version: str | None = None) -> Any:
    try:
        model = await _model(state, name, version)
    except ProtocolError as exc:
        return _error(str(exc), exc.status)
    return kserve.metadata(model.cfg, model.detector.input_name, state.manager.versions())


@router.get("/models/{name}/ready", summary="Model readiness", responses={400: ERROR, 404: ERROR})
@router.get(
    "/models/{name}/versions/{version}/ready",
    summary="Model version readiness",
    responses={400: ERROR, 404: ERROR},
)
async def model_ready(state: StateDep, name: str, version: str | None = None) -> Any:
    """200 when the version can take an infer request now; a registered version that
    is not active is loaded on this call."""
    try:
        model = await _model(state, name, version)
    except ProtocolError as exc:
        return _error(str(exc), 400 if exc.status == 503 else exc.status)
    return {"name": MODEL_NAME, "version": str(model.version), "ready": True}


INFER_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/InferenceRequest"},
                "example": {
                    "inputs": [
                        {
                            "name": kserve.IMAGE_INPUT,
                            "datatype": "BYTES",
                            "shape": [1],
                            "data": ["<base64 of a JPEG>"],
                        }
                    ],
                    "outputs": [{"name": kserve.OUTPUT}],
                },
            },
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "Triton's binary tensor data extension: the JSON header "
                f"({kserve.HEADER} bytes), then the tensors' bytes",
            },
        },
    }
}


@router.post(
    "/models/{name}/infer",
    summary="Inference: the raw grid for a tensor or encoded images",
    openapi_extra=INFER_DOC,
    responses={
        200: {
            "description": "the v2 response; with binary outputs, the JSON "
            f"({kserve.HEADER} bytes) then the tensors' bytes",
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/InferenceResponse"}},
                "application/octet-stream": {},
            },
        },
        400: ERROR,
        404: ERROR,
        413: ERROR,
    },
)
@router.post(
    "/models/{name}/versions/{version}/infer",
    openapi_extra=INFER_DOC,
    summary="Inference on a given version",
)
async def infer(
    request: Request,
    state: StateDep,
    name: str,
    version: str | None = None,
    inference_header_content_length: Annotated[str | None, Header()] = None,
) -> Response:
    try:
        model = await _model(state, name, version)
        body = await request.body()
        req = kserve.parse_infer(body, inference_header_content_length, MAX_ELEMENTS)
        grid = await _run(state, model, req)
    except ProtocolError as exc:
        return _error(str(exc), exc.status)
    except HTTPException as exc:  # the body limits, while it streams in
        return _error(str(exc.detail), exc.status_code)
    except STATUS_TYPES as exc:  # bad images and input, as app.errors words them
        return _error(str(exc), input_status(exc))
    content, headers = kserve.encode_response(req, grid, model.version)
    return Response(content, headers=headers)


async def _run(state: AppState, model: ServedModel, req: kserve.InferRequest) -> np.ndarray:
    if len(req.inputs) != 1:
        raise ProtocolError(
            f"send one input: {model.detector.input_name!r} (FP32) or {kserve.IMAGE_INPUT!r}"
            " (BYTES)"
        )
    t = req.inputs[0]
    size = model.cfg.input_size
    if t.name == kserve.IMAGE_INPUT:
        if t.datatype != "BYTES" or len(t.shape) != 1:
            raise ProtocolError(f"{kserve.IMAGE_INPUT} is BYTES of shape [N]")
        n = len(t.data)
        if not 1 <= n <= state.settings.max_images_per_request:
            raise ProtocolError(
                f"{n} images; 1 to {state.settings.max_images_per_request} per request", 413
            )
        loop = asyncio.get_running_loop()

        async def one(data: bytes) -> np.ndarray:
            p = await loop.run_in_executor(
                state.cpu_pool, prepare, data, model, state.settings.max_pixels
            )
            return (await state.batcher.submit(p.array, model)).grid

        return np.stack(await asyncio.gather(*(one(d) for d in t.data)))
    if t.name != model.detector.input_name:
        raise ProtocolError(
            f"unknown input {t.name!r}; the model takes {model.detector.input_name!r} or "
            f"{kserve.IMAGE_INPUT!r}"
        )
    if t.datatype not in ("FP32", "FP16", "FP64"):
        raise ProtocolError(f"{t.name} is FP32 (got {t.datatype})")
    if len(t.shape) != 4 or t.shape[1:] != [3, size, size] or t.shape[0] < 1:
        raise ProtocolError(f"{t.name} has shape [N, 3, {size}, {size}]; got {t.shape}")
    x = np.ascontiguousarray(t.data, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ProtocolError(f"{t.name} holds NaN or infinite values")
    return await state.batcher.call(lambda: model.detector.run_tensor(x))
