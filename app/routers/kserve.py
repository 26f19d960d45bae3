"""KServe v2 / Open Inference Protocol routes (``app.kserve`` has the wire format).
Errors are ``{"error": message}``, as the protocol and its clients expect."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Request, Response
from fastapi.responses import JSONResponse

from app import kserve
from app.errors import STATUS, input_status
from app.kserve import MODEL_NAME, ProtocolError
from app.state import AppState, StateDep

router = APIRouter(prefix="/v2", tags=["kserve v2"])
STATUS_TYPES = tuple(t for t, _ in STATUS)

ERROR = {
    "description": '{"error": message}',
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/InferenceError"}}},
}


def _error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


@router.get("", summary="Server metadata", response_model=kserve.ServerMetadata)
def server_metadata(request: Request) -> dict[str, Any]:
    return {
        "name": "yolov1-service",
        "version": request.app.version,
        "extensions": ["binary_tensor_data", *kserve.EXTENSIONS],
    }


@router.get("/health/live", summary="Server liveness (200: live)")
def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", summary="Server readiness (200: ready, 400: not yet)")
def ready(state: StateDep) -> JSONResponse:
    return JSONResponse(
        {"ready": state.holder.ready}, status_code=200 if state.holder.ready else 400
    )


@router.post(
    "/repository/index",
    summary="The model repository's index (Triton's extension, read-only)",
    responses={400: ERROR},
)
async def repository_index(request: Request, state: StateDep) -> Any:
    """Each registered version of ``yolov1`` with its state; ``{"ready": true}`` lists
    the loaded ones only. A request that names a version loads it, and activating one
    (``/v1/models/{v}/activate``) serves it."""
    body = await request.body()
    try:
        ready = bool(json.loads(body).get("ready", False)) if body.strip() else False
    except (ValueError, AttributeError):
        return _error('the body is JSON: {"ready": true|false}, or empty')
    try:
        return kserve.repository_index(state, ready)
    except ProtocolError as exc:
        return _error(str(exc), exc.status)


async def _parameters(request: Request) -> dict[str, Any]:
    """The ``parameters`` of a repository load or unload body (which may be empty)."""
    body = await request.body()
    try:
        doc = json.loads(body) if body.strip() else {}
    except ValueError:
        doc = None
    params = doc.get("parameters", {}) if isinstance(doc, dict) else None
    if not isinstance(params, dict):
        raise ProtocolError('the body is JSON: {"parameters": {...}}, or empty')
    return params


@router.post(
    "/repository/models/{name}/load",
    summary="(Re)load the model: serve the registry's active version now",
    responses={400: ERROR, 404: ERROR, 503: ERROR},
)
async def repository_load(name: str, request: Request, state: StateDep) -> Any:
    """Triton's load. The server follows the model registry's active version by itself
    (within ``YOLOV1_MODEL_POLL_S``); a load makes it do so now, and tries again a
    version that failed to load. A ``config`` or files to load from are refused."""
    try:
        await kserve.load_model(state, name, await _parameters(request))
    except ProtocolError as exc:
        return _error(str(exc), exc.status)
    return {}


@router.post(
    "/repository/models/{name}/unload",
    summary="Unload the model: refused, one version always serves",
    responses={400: ERROR, 404: ERROR},
)
async def repository_unload(name: str, request: Request, state: StateDep) -> Any:
    """Triton's unload, refused with the reason (as Triton refuses it outside its
    explicit model control mode): activate another version instead."""
    try:
        await _parameters(request)
        kserve.unload_model(state, name)
    except ProtocolError as exc:
        return _error(str(exc), exc.status)
    return {}


@router.get(
    "/models/stats",
    summary="Inference statistics of every model (Triton's statistics extension)",
)
@router.get(
    "/models/{name}/stats",
    summary="Inference statistics of each version of a model",
    responses={404: ERROR},
)
@router.get(
    "/models/{name}/versions/{version}/stats",
    summary="Inference statistics of a model version",
    responses={404: ERROR},
)
def model_stats(state: StateDep, name: str | None = None, version: str | None = None) -> Any:
    """Counts and cumulative nanoseconds per version since this process started: every
    image run (detect, /v2, gRPC, Label Studio) is one inference request; what
    perf_analyzer prints as the server side of its requests."""
    try:
        return kserve.stats_of(state, name, version)
    except ProtocolError as exc:
        return _error(str(exc), exc.status)


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
    return await _about(state, name, version, kserve.metadata_of)


@router.get(
    "/models/{name}/config",
    summary="Model configuration (Triton's extension, what perf_analyzer reads)",
    responses={404: ERROR},
)
@router.get(
    "/models/{name}/versions/{version}/config",
    summary="Model version configuration",
    responses={404: ERROR},
)
async def model_config(state: StateDep, name: str, version: str | None = None) -> Any:
    return await _about(state, name, version, kserve.config_of)


async def _about(state: AppState, name: str, version: str | None, describe) -> Any:
    """``describe(state, model)`` of the named version, or the protocol's error."""
    try:
        model = await kserve.resolve_model(state, name, version)
    except ProtocolError as exc:
        return _error(str(exc), exc.status)
    return describe(state, model)


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
        model = await kserve.resolve_model(state, name, version)
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
        model = await kserve.resolve_model(state, name, version)
        body = await request.body()
        req = kserve.parse_infer(body, inference_header_content_length, kserve.MAX_ELEMENTS)
        grid = await kserve.run_infer(state, model, req)
    except ProtocolError as exc:
        return _error(str(exc), exc.status)
    except HTTPException as exc:  # the body limits, while it streams in
        return _error(str(exc.detail), exc.status_code)
    except STATUS_TYPES as exc:  # bad images and input, as app.errors words them
        return _error(str(exc), input_status(exc))
    content, headers = kserve.encode_response(req, grid, model.version)
    return Response(content, headers=headers)
