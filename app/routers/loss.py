from __future__ import annotations

import io
from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException, Request
from pydantic import TypeAdapter, ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from app.aio import in_thread
from app.errors import validation_error
from app.schemas import Grid, Label, LossOptions, LossRequest, LossResponse
from app.scoring import score
from app.state import ModelDep, StateDep

router = APIRouter(prefix="/v1", tags=["loss"])
LABELS = TypeAdapter(list[list[Label]])

OPENAPI_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/LossRequest"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["predictions", "labels"],
                    "properties": {
                        "predictions": {
                            "type": "string",
                            "format": "binary",
                            "description": "a .npy file (numpy.save), no pickles",
                        },
                        "labels": {
                            "type": "string",
                            "description": "JSON: one list of {class_id, box} per image",
                        },
                        "options": {
                            "type": "string",
                            "description": "JSON: grid, lambda_coord, lambda_noobj, "
                            "confidence_target, layout, metrics",
                        },
                    },
                }
            },
        },
    }
}


async def _parse(request: Request, limit: int) -> tuple[Any, list[list[Label]], LossOptions]:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise HTTPException(413, f"body of {length} bytes exceeds the limit of {limit} bytes")
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        body = await request.body()
        try:
            req = LossRequest.model_validate_json(body)
        except ValidationError as exc:
            raise validation_error(exc, "body") from exc
        return req.predictions, req.labels, req
    if ctype == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=10, max_part_size=limit)
        except MultiPartException as exc:
            raise HTTPException(400, f"malformed multipart body: {exc.message}") from exc
        part = form.get("predictions")
        if not isinstance(part, UploadFile):
            raise HTTPException(422, "multipart body needs a 'predictions' .npy file part")
        raw = await part.read()
        try:
            preds = np.load(io.BytesIO(raw), allow_pickle=False)
        except Exception as exc:
            raise HTTPException(422, f"'predictions' is not a readable .npy array: {exc}") from exc
        labels_part = form.get("labels")
        if labels_part is None:
            raise HTTPException(422, "multipart body needs a 'labels' JSON part")
        text = await labels_part.read() if isinstance(labels_part, UploadFile) else labels_part
        try:
            labels = LABELS.validate_json(text)
            opt_part = form.get("options")
            if isinstance(opt_part, UploadFile):
                opt_part = await opt_part.read()
            options = LossOptions.model_validate_json(opt_part) if opt_part else LossOptions()
        except ValidationError as exc:
            raise validation_error(exc, "form") from exc
        return preds, labels, options
    raise HTTPException(415, "send application/json, or multipart/form-data with a .npy part")


@router.post(
    "/loss",
    response_model=LossResponse,
    response_model_by_alias=True,
    openapi_extra=OPENAPI_BODY,
    summary="The YOLOv1 loss of raw predictions against labels",
    responses={
        413: {"description": "too large"},
        415: {"description": "unsupported body"},
        422: {"description": "invalid predictions, labels or options"},
    },
)
async def loss(request: Request, state: StateDep, model: ModelDep) -> LossResponse:
    """The batch mean of the per-image loss (Redmon et al. 2016, eq. 3; docs/loss.md),
    its five terms, and each image's loss. JSON body (``LossRequest``), or
    multipart with a ``predictions`` .npy part, a ``labels`` JSON part and an
    optional ``options`` JSON part, for large batches."""
    preds, labels, opts = await _parse(request, state.settings.max_upload_bytes)
    grid = opts.grid or Grid(S=model.cfg.S, B=model.cfg.B, C=model.cfg.C)
    out = await in_thread(
        state.score_pool,
        score,
        preds,
        labels,
        opts,
        grid,
        model.cfg.class_names,
        state.settings.max_loss_images,
    )
    state.metrics.scored.inc(len(labels))
    return out
