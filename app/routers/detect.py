from __future__ import annotations

import asyncio
import io
import time
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import TypeAdapter
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from app.schemas import Box, Detection, DetectResult, ImageSize, ModelRef, Timing
from app.serving import ServedModel
from app.state import AppState, ModelDep, StateDep
from model.infer import draw_detections
from model.preprocess import (
    SUPPORTED_FORMATS,
    ImageDecodeError,
    ImageTooLargeError,
    UnsupportedFormatError,
    decode_image,
)

router = APIRouter(prefix="/v1", tags=["detect"])
RESULTS = TypeAdapter(list[DetectResult])

IMAGE_BODY = {"type": "string", "format": "binary"}
OPENAPI_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {"image": {"type": "array", "items": IMAGE_BODY}},
                },
                "encoding": {
                    "image": {"contentType": "image/jpeg, image/png, image/webp, image/bmp"}
                },
            },
            "image/jpeg": {"schema": IMAGE_BODY},
            "image/png": {"schema": IMAGE_BODY},
            "image/webp": {"schema": IMAGE_BODY},
            "image/bmp": {"schema": IMAGE_BODY},
        },
    }
}


async def _read_body(request: Request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"upload exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_images(request: Request, state: AppState) -> list[bytes]:
    """The request's images: multipart ``image`` fields, or the raw body."""
    s = state.settings
    limit = s.max_upload_bytes
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise HTTPException(413, f"upload of {length} bytes exceeds the limit of {limit} bytes")
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        try:
            form = await request.form(max_files=s.max_images_per_request, max_fields=50)
        except MultiPartException as exc:
            raise HTTPException(400, f"malformed multipart body: {exc.message}") from exc
        fields = form.getlist("image")
        if not fields:
            raise HTTPException(422, "the multipart body has no 'image' file field")
        out = []
        for f in fields:
            if not isinstance(f, UploadFile):
                raise HTTPException(422, "each 'image' field must be a file, not text")
            data = await f.read()
            if len(data) > limit:
                raise HTTPException(413, f"an image exceeds the limit of {limit} bytes")
            out.append(data)
        return out
    if ctype.startswith("image/") or ctype == "application/octet-stream":
        return [await _read_body(request, limit)]
    raise HTTPException(
        415,
        "send multipart/form-data with one or more 'image' file fields, "
        "or the image itself as the body with an image/* content type",
    )


def _class_filter(classes: list[str] | None, names: list[str]) -> list[int] | None:
    if not classes:
        return None
    out = []
    for item in (c.strip() for entry in classes for c in entry.split(",")):
        if not item:
            continue
        if item.lstrip("-").isdigit():
            k = int(item)
            if not 0 <= k < len(names):
                raise HTTPException(422, f"class id {k} is outside [0, {len(names)})")
            out.append(k)
        elif item in names:
            out.append(names.index(item))
        else:
            raise HTTPException(422, f"unknown class {item!r}; classes are {names}")
    return out


def _decode_and_prepare(data: bytes, model: ServedModel, max_pixels: int):
    t0 = time.perf_counter()
    img = decode_image(data, max_pixels=max_pixels, formats=SUPPORTED_FORMATS)
    t1 = time.perf_counter()
    arr = model.detector.preprocess(img)
    return img, arr, (t1 - t0) * 1000, (time.perf_counter() - t1) * 1000


async def _detect_one(state: AppState, data: bytes, opts: dict[str, Any]):
    batcher = state.batcher
    model = state.holder.current
    batcher.incoming += 1
    try:
        try:
            if batcher.idle:
                # Nothing to batch with: decode, prepare and run in one hop to the
                # inference thread (batches that form meanwhile queue behind it).
                img, arr, decode_ms, prep_ms, res = await batcher.run_alone(
                    lambda: _decode_and_prepare(data, model, state.settings.max_pixels), model
                )
            else:
                img, arr, decode_ms, prep_ms = await asyncio.get_running_loop().run_in_executor(
                    state.cpu_pool, _decode_and_prepare, data, model, state.settings.max_pixels
                )
                res = None
        except ImageTooLargeError as exc:
            raise HTTPException(413, str(exc)) from exc
        except UnsupportedFormatError as exc:
            raise HTTPException(415, str(exc)) from exc
        except ImageDecodeError as exc:
            raise HTTPException(400, str(exc)) from exc
    finally:
        batcher.incoming -= 1
    if res is None:
        res = await batcher.submit(arr, model)
    t0 = time.perf_counter()
    served: ServedModel = res.model
    found = served.detector.postprocess(res.grid, img.width, img.height, **opts)
    post_ms = (time.perf_counter() - t0) * 1000
    timing = Timing(
        decode=decode_ms,
        preprocess=prep_ms,
        queue=res.queue_ms,
        inference=res.inference_ms,
        postprocess=post_ms,
    )
    return img, res, found, timing


@router.post(
    "/detect",
    response_model=DetectResult | list[DetectResult],
    openapi_extra=OPENAPI_BODY,
    summary="Detect objects in one or more images",
    responses={
        200: {"content": {"image/png": {}}, "description": "JSON, or a PNG with format=image"},
        400: {"description": "not a readable image"},
        413: {"description": "upload or image too large"},
        415: {"description": "unsupported content or image format"},
        422: {"description": "invalid parameters"},
    },
)
async def detect(
    request: Request,
    state: StateDep,
    model: ModelDep,
    conf_threshold: Annotated[
        float, Query(ge=0, le=1, description="minimum class-specific confidence")
    ] = 0.2,
    iou_threshold: Annotated[float, Query(ge=0, le=1, description="NMS IoU threshold")] = 0.5,
    max_detections: Annotated[int, Query(ge=1, le=1000)] = 100,
    classes: Annotated[
        list[str] | None, Query(description="keep only these classes (ids or names)")
    ] = None,
    include_raw: Annotated[
        bool, Query(description="also return the raw (S, S, 5B+C) grid")
    ] = False,
    format: Annotated[
        Literal["json", "image"], Query(description="'image': a PNG with the boxes drawn")
    ] = "json",
) -> Any:
    """Send the image as multipart ``image`` field(s) or as the raw body
    (``Content-Type: image/jpeg`` ...). Several ``image`` fields give a list of results."""
    images = await read_images(request, state)
    if len(images) > state.settings.max_images_per_request:
        raise HTTPException(
            413, f"at most {state.settings.max_images_per_request} images per request"
        )
    if format == "image" and len(images) != 1:
        raise HTTPException(422, "format=image takes exactly one image")
    opts = dict(
        conf_threshold=conf_threshold,
        iou_threshold=iou_threshold,
        max_detections=max_detections,
        classes=_class_filter(classes, model.cfg.class_names),
    )
    if len(images) == 1:  # no task to spawn for the common case
        done = [await _detect_one(state, images[0], opts)]
    else:
        done = await asyncio.gather(*(_detect_one(state, d, opts) for d in images))
    if format == "image":
        img, _, found, _ = done[0]
        buf = io.BytesIO()
        draw_detections(img, found).save(buf, format="PNG")
        return Response(buf.getvalue(), media_type="image/png")
    results = []
    for img, res, found, timing in done:
        results.append(
            DetectResult(
                model=ModelRef(name=res.model.name, version=res.model.version),
                image=ImageSize(width=img.width, height=img.height),
                detections=[
                    Detection(
                        class_id=d.class_id,
                        class_name=d.class_name,
                        confidence=min(1.0, max(0.0, d.confidence)),
                        box=Box(x1=d.box[0], y1=d.box[1], x2=d.box[2], y2=d.box[3]),
                    )
                    for d in found
                ],
                timing_ms=timing,
                raw=np.asarray(res.grid, dtype=np.float64).tolist() if include_raw else None,
            )
        )
    # Built from validated parts already: serialise once instead of having FastAPI
    # validate the response model again (a measurable share of a ~6 ms request).
    if len(results) == 1:
        return Response(results[0].model_dump_json(), media_type="application/json")
    return Response(RESULTS.dump_json(results), media_type="application/json")
