from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import TypeAdapter, ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from app.aio import gather_or_cancel, in_thread
from app.detection import Detected, check_request_pixels, class_filter, detect_image
from app.errors import validation_error
from app.limits import read_capped
from app.schemas import (
    Box,
    CocoDetection,
    Detection,
    DetectRequest,
    DetectResult,
    ImageInput,
    ImageSize,
    ModelRef,
)
from app.settings import Settings
from app.sources import decode_base64, fetch_image, fetch_limits
from app.state import AppState, ModelDep, StateDep
from model.infer import draw_detections
from model.preprocess import SUPPORTED_FORMATS, decode_image

router = APIRouter(prefix="/v1", tags=["detect"])
RESULTS = TypeAdapter(list[DetectResult])
COCO = TypeAdapter(list[CocoDetection])


def _check_count(n: int, s: Settings) -> None:
    if n > s.max_images_per_request:
        raise HTTPException(413, f"at most {s.max_images_per_request} images per request")


def _given(body_value: Any, query_value: Any) -> Any:
    return query_value if body_value is None else body_value


IMAGE_BODY = {"type": "string", "format": "binary"}
IMAGE_TYPES = [f"image/{f.lower()}" for f in SUPPORTED_FORMATS]  # image/jpeg ... image/avif
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
                "encoding": {"image": {"contentType": ", ".join(IMAGE_TYPES)}},
            },
            "application/json": {"schema": {"$ref": "#/components/schemas/DetectRequest"}},
            **{t: {"schema": IMAGE_BODY} for t in IMAGE_TYPES},
        },
    }
}


async def _read_body(request: Request, limit: int) -> bytes:
    too_large = HTTPException(413, f"upload exceeds the limit of {limit} bytes")
    return await read_capped(request.stream(), limit, too_large)


@dataclass
class Upload:
    data: bytes
    image_id: int  # format=coco's image_id: the JSON image's ``id``, else its position


async def read_images(request: Request, state: AppState) -> list[bytes]:
    """The request's images: multipart ``image`` fields (else every file part), or the
    raw body."""
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
            # Tools name the part as they like ("file" is common): with no 'image'
            # field, every file part is an image, in order.
            fields = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not fields:
            names = sorted({k for k, _ in form.multi_items()})
            raise HTTPException(
                422,
                "the multipart body has no file: send each image as a file field named "
                "'image'" + (f" (found only text fields: {', '.join(names)})" if names else ""),
            )
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
        "send multipart/form-data with one or more 'image' file fields, the image "
        "itself as the body with an image/* content type, or application/json "
        '{"images": [{"base64": "..."}]}',
    )


async def read_json_request(request: Request, state: AppState) -> DetectRequest:
    body = await _read_body(request, json_body_limit(state.settings))
    try:
        return DetectRequest.model_validate_json(body)
    except ValidationError as exc:
        raise validation_error(exc, "body") from exc


def json_body_limit(s: Settings) -> int:
    """Base64 is 4/3 of the bytes it carries, plus the JSON around it."""
    return s.max_upload_bytes * 4 // 3 + 64 * 1024


async def resolve_images(images: list[ImageInput], s: Settings) -> list[Upload]:
    """Base64 and data: URLs decoded, other URLs fetched (only from allowed hosts)."""
    limit = s.max_upload_bytes

    async def one(i: int, img: ImageInput) -> Upload:
        where = f"images[{i}]"
        if img.base64 is not None:
            data = decode_base64(img.base64, limit, f"{where}.base64")
        else:
            data = await fetch_image(
                img.url, allowed_hosts=s.image_url_hosts, where=f"{where}.url", **fetch_limits(s)
            )
        return Upload(data, img.id if img.id is not None else i)

    return await gather_or_cancel(*(one(i, img) for i, img in enumerate(images)))


def coco_results(done: list[Detected], uploads: list[Upload]) -> list[CocoDetection]:
    """COCO's results format: one entry per box, ``bbox`` as [x, y, w, h]."""
    return [
        CocoDetection(
            image_id=u.image_id,
            category_id=d.class_id,
            bbox=[d.box[0], d.box[1], d.box[2] - d.box[0], d.box[3] - d.box[1]],
            score=min(1.0, max(0.0, d.confidence)),
        )
        for det, u in zip(done, uploads, strict=True)
        for d in det.detections
    ]


@router.post(
    "/detect",
    response_model=DetectResult | list[DetectResult] | list[CocoDetection],
    openapi_extra=OPENAPI_BODY,
    summary="Detect objects in one or more images",
    responses={
        200: {"content": {"image/png": {}}, "description": "JSON, or a PNG with format=image"},
        400: {"description": "not a readable image"},
        413: {"description": "upload or image too large"},
        415: {"description": "unsupported content or image format"},
        422: {"description": "invalid parameters, base64 or image URL"},
    },
)
async def detect(
    request: Request,
    state: StateDep,
    model: ModelDep,
    conf_threshold: Annotated[
        float | None,
        Query(
            ge=0,
            le=1,
            description="minimum class-specific confidence (default: YOLOV1_CONF_THRESHOLD, "
            "else the model's calibrated threshold, shown in /v1/models)",
        ),
    ] = None,
    iou_threshold: Annotated[float, Query(ge=0, le=1, description="NMS IoU threshold")] = 0.5,
    max_detections: Annotated[int, Query(ge=1, le=1000)] = 100,
    classes: Annotated[
        list[str] | None, Query(description="keep only these classes (ids or names)")
    ] = None,
    include_raw: Annotated[
        bool, Query(description="also return the raw (S, S, 5B+C) grid")
    ] = False,
    format: Annotated[
        Literal["json", "image", "coco"],
        Query(
            description="'image': a PNG with the boxes drawn; 'coco': a COCO results list "
            "(image_id, category_id, bbox [x, y, w, h], score)"
        ),
    ] = "json",
) -> Any:
    """Send the image as multipart ``image`` field(s), as the raw body
    (``Content-Type: image/jpeg`` ...), or as JSON (``DetectRequest``:
    ``{"images": [{"base64": "..."}], "conf_threshold": 0.3}``). Several images give a
    list of results."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        req = await read_json_request(request, state)
        conf_threshold = _given(req.conf_threshold, conf_threshold)
        iou_threshold = _given(req.iou_threshold, iou_threshold)
        max_detections = _given(req.max_detections, max_detections)
        classes = _given(req.classes, classes)
        include_raw = _given(req.include_raw, include_raw)
        format = _given(req.format, format)
        _check_count(len(req.images), state.settings)  # before fetching any
        uploads = await resolve_images(req.images, state.settings)
    else:
        uploads = [Upload(d, i) for i, d in enumerate(await read_images(request, state))]
    images = [u.data for u in uploads]
    _check_count(len(images), state.settings)
    if format == "image" and len(images) != 1:
        raise HTTPException(422, "format=image takes exactly one image")
    if len(images) > 1:
        check_request_pixels(images, state.settings.max_request_pixels)
    if conf_threshold is None:
        conf_threshold = state.settings.conf_threshold  # None still: the model's own
    opts = dict(
        conf_threshold=conf_threshold,
        iou_threshold=iou_threshold,
        max_detections=max_detections,
        classes=class_filter(classes, model.cfg.class_names),
    )

    served = state.holder.current

    def one(data: bytes):
        return detect_image(
            data,
            served,
            state.batcher,
            state.cpu_pool,
            max_pixels=state.settings.max_pixels,
            options=opts,
        )

    async def every_image() -> list[Detected]:
        if len(images) == 1:  # no task to spawn for the common case
            return [await one(images[0])]
        return await gather_or_cancel(*(one(d) for d in images))

    done = await state.stats.count(served.version, every_image(), lambda ds: [d.timing for d in ds])
    if format == "coco":
        return Response(COCO.dump_json(coco_results(done, uploads)), media_type="application/json")
    if format == "image":  # drawn on the full image: decode it whole this once
        img = await in_thread(
            state.cpu_pool, lambda: decode_image(images[0], max_pixels=state.settings.max_pixels)
        )
        buf = io.BytesIO()
        draw_detections(img, done[0].detections).save(buf, format="PNG")
        return Response(buf.getvalue(), media_type="image/png")
    results = []
    for d in done:
        res, found, timing = d.result, d.detections, d.timing
        results.append(
            DetectResult(
                model=ModelRef(name=res.model.name, version=res.model.version),
                image=ImageSize(width=d.width, height=d.height),
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
                conf_threshold=res.model.detector.conf_threshold
                if conf_threshold is None
                else conf_threshold,
                raw=np.asarray(res.grid, dtype=np.float64).tolist() if include_raw else None,
            )
        )
    # Built from validated parts already: serialise once instead of having FastAPI
    # validate the response model again (a measurable share of a ~6 ms request).
    if len(results) == 1:
        return Response(results[0].model_dump_json(), media_type="application/json")
    return Response(RESULTS.dump_json(results), media_type="application/json")
