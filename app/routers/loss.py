from __future__ import annotations

import asyncio
import io
from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from app.schemas import (
    Grid,
    ImageLoss,
    Label,
    LossMetrics,
    LossOptions,
    LossRequest,
    LossResponse,
    LossTerms,
)
from app.state import ModelDep, StateDep
from model.boxes import cxcywh_to_xyxy, decode_predictions
from model.layout import darknet_to_cells
from model.loss_core import TERMS
from model.loss_numpy import yolo_loss_numpy
from model.metrics import ImageDetections, ImageTruth, evaluate_map

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


def _validation_error(exc: ValidationError, where: str) -> RequestValidationError:
    # Echoing "input" back could mean megabytes of predictions, or bytes that are
    # not text: say where and what is wrong, not what was sent.
    errors = [
        {"type": e["type"], "loc": (where, *e.get("loc", ())), "msg": e["msg"]}
        for e in exc.errors(include_url=False, include_input=False, include_context=False)
    ]
    return RequestValidationError(errors)


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
            raise _validation_error(exc, "body") from exc
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
            raise _validation_error(exc, "form") from exc
        return preds, labels, options
    raise HTTPException(415, "send application/json, or multipart/form-data with a .npy part")


def _score(
    preds: Any,
    labels: list[list[Label]],
    opts: LossOptions,
    grid: Grid,
    class_names: list[str],
    max_images: int,
) -> LossResponse:
    S, B, C = grid.S, grid.B, grid.C
    try:
        arr = np.asarray(preds, dtype=np.float64)
    except (ValueError, TypeError) as exc:
        raise HTTPException(422, f"predictions must be a regular numeric array: {exc}") from exc
    ch = 5 * B + C
    expected = f"(N, {S}, {S}, {ch})" if opts.layout == "cells" else f"(N, {S * S * ch})"
    ok_ndim = 4 if opts.layout == "cells" else 2
    if arr.ndim != ok_ndim or arr.shape[0] == 0:
        raise HTTPException(
            422,
            f"predictions must have shape {expected} for S={S}, B={B}, "
            f"C={C} (layout {opts.layout}), got {arr.shape}",
        )
    if arr.shape[0] > max_images:
        raise HTTPException(413, f"at most {max_images} images per request, got {arr.shape[0]}")
    if len(labels) != arr.shape[0]:
        raise HTTPException(422, f"labels has {len(labels)} lists for {arr.shape[0]} images")
    try:
        if opts.layout == "darknet":
            arr = darknet_to_cells(arr, S=S, B=B, C=C)
        lab = [
            np.array([[x.class_id, *x.box] for x in image], dtype=np.float64).reshape(-1, 5)
            for image in labels
        ]
        r = yolo_loss_numpy(
            arr,
            lab,
            S=S,
            B=B,
            C=C,
            lambda_coord=opts.lambda_coord,
            lambda_noobj=opts.lambda_noobj,
            confidence_target=opts.confidence_target,
        )
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc
    if not np.isfinite(r.per_image["total"]).all():
        raise HTTPException(422, "predictions are too large: the loss overflows")

    def terms_of(get) -> LossTerms:
        return LossTerms(**{("class_" if k == "class" else k): float(get(k)) for k in TERMS})

    per_image = [
        ImageLoss(
            loss=float(r.per_image["total"][n]),
            terms=terms_of(lambda k, n=n: r.per_image[k][n]),
            objects=int(r.objects[n]),
            dropped_objects=int(r.dropped[n]),
        )
        for n in range(arr.shape[0])
    ]
    metrics = None
    if opts.metrics:
        dets, truths = [], []
        for p, t in zip(arr, lab, strict=True):
            d = decode_predictions(p, S=S, B=B, C=C, conf_threshold=0.01)
            dets.append(ImageDetections(d["boxes"], d["scores"], d["class_ids"]))
            truths.append(ImageTruth(cxcywh_to_xyxy(t[:, 1:]), t[:, 0].astype(int)))
        m = evaluate_map(dets, truths, C)
        names = class_names if len(class_names) == C else [f"class{i}" for i in range(C)]
        metrics = LossMetrics(
            map50=None if np.isnan(m.map) else m.map, ap50={names[c]: v for c, v in m.ap.items()}
        )
    return LossResponse(
        loss=float(r.total),
        terms=terms_of(lambda k: r.terms[k]),
        per_image=per_image,
        grid=grid,
        metrics=metrics,
    )


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
    return await asyncio.get_running_loop().run_in_executor(
        state.cpu_pool,
        _score,
        preds,
        labels,
        opts,
        grid,
        model.cfg.class_names,
        state.settings.max_loss_images,
    )
