"""Detection of one uploaded image, stage by stage (decode, preprocess, infer through
the batcher, postprocess), callable without HTTP. Raises ``model.preprocess``'s
decode errors for bad images (``app.errors`` maps them to 4xx)."""

from __future__ import annotations

import io
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from app.aio import in_thread
from app.batching import BatchResult, MicroBatcher
from app.errors import InputError
from app.memory import after_image
from app.schemas import Timing
from app.serving import ServedModel
from model.infer import Detection
from model.preprocess import SUPPORTED_FORMATS, decode_for_size


@dataclass
class Prepared:
    width: int  # the image as sent, EXIF-oriented: the frame boxes are reported in
    height: int
    array: np.ndarray  # (size, size, 3) uint8 network input
    decode_ms: float
    preprocess_ms: float


@dataclass
class Detected:
    width: int
    height: int
    result: BatchResult  # the grid and the model version that produced it
    detections: list[Detection]
    timing: Timing


def prepare(data: bytes, model: ServedModel, max_pixels: int) -> Prepared:
    """Decode only the pixels the network needs (``decode_for_size``), then resize."""
    t0 = time.perf_counter()
    img, (w, h), decoded = decode_for_size(
        data, model.cfg.input_size, max_pixels=max_pixels, formats=SUPPORTED_FORMATS
    )
    t1 = time.perf_counter()
    arr = model.detector.preprocess(img)
    del img
    after_image(decoded)  # the pixels decoded, not the photo's: a JPEG decodes small
    return Prepared(w, h, arr, (t1 - t0) * 1000, (time.perf_counter() - t1) * 1000)


def in_lane(data: bytes, model: ServedModel, max_pixels: int) -> tuple[Prepared, BatchResult]:
    """Decode, prepare and run one image on a lane of its own (``ServedModel.lanes``)."""
    prepared = prepare(data, model, max_pixels)
    t0 = time.perf_counter()
    grid = model.run_lane(prepared.array[None])[0]
    return prepared, BatchResult(grid, model, (time.perf_counter() - t0) * 1000, 0.0, 1)


def check_request_pixels(images: list[bytes], limit: int) -> None:
    """Refuse a request whose images hold more than ``limit`` pixels in all, read from
    their headers before any is decoded (each image is also held to ``max_pixels``)."""
    total = 0
    for data in images:
        try:
            with Image.open(io.BytesIO(data)) as im:
                total += im.width * im.height
        except Exception:
            continue  # not an image: its own decode says so, with the reason
    if total > limit:
        raise InputError(
            413,
            f"the request's images hold {total} pixels in all; the limit is {limit} "
            "(YOLOV1_MAX_REQUEST_PIXELS): send fewer or smaller images per request",
        )


def class_filter(classes: list[str] | None, names: list[str]) -> list[int] | None:
    """``?classes=`` values (ids or names, repeated or comma-separated) -> class ids."""
    if not classes:
        return None
    out = []
    for item in (c.strip() for entry in classes for c in entry.split(",")):
        if not item:
            continue
        if item.isascii() and item.lstrip("-").isdigit():
            k = int(item)
            if not 0 <= k < len(names):
                raise InputError(422, f"class id {k} is outside [0, {len(names)})")
            out.append(k)
        elif item in names:
            out.append(names.index(item))
        else:
            raise InputError(422, f"unknown class {item!r}; classes are {names}")
    return out


async def infer_image(
    data: bytes, model: ServedModel, batcher: MicroBatcher, pool: Executor, *, max_pixels: int
) -> tuple[Prepared, BatchResult]:
    """Decode, prepare and run one image the cheapest way the moment allows: in one hop
    when the service is idle, on a lane of its own under load (CPU), else batched."""
    with batcher.expecting():
        if batcher.idle:
            # Nothing to batch with: decode, prepare and run in one hop to the
            # inference thread (batches that form meanwhile queue behind it).
            ran = await batcher.run_alone(lambda: prepare(data, model, max_pixels), model)
            prepared, result = ran.prepared, ran.result
        elif model.lanes is not None:
            prepared, result = await in_thread(pool, in_lane, data, model, max_pixels)
            batcher.observe(model, result.inference_ms / 1000)
        else:
            prepared = await in_thread(pool, prepare, data, model, max_pixels)
            result = None
    if result is None:
        result = await batcher.submit(prepared.array, model)
    return prepared, result


async def detect_image(
    data: bytes,
    model: ServedModel,
    batcher: MicroBatcher,
    pool: Executor,
    *,
    max_pixels: int,
    options: dict[str, Any],
) -> Detected:
    """``options``: ``postprocess``'s thresholds, ``max_detections`` and ``classes``."""
    prepared, result = await infer_image(data, model, batcher, pool, max_pixels=max_pixels)
    t0 = time.perf_counter()
    w, h = prepared.width, prepared.height
    found = result.model.detector.postprocess(result.grid, w, h, **options)
    return Detected(w, h, result, found, timing_of(prepared, result, time.perf_counter() - t0))


def timing_of(prepared: Prepared, result: BatchResult, postprocess_s: float = 0.0) -> Timing:
    return Timing(
        decode=prepared.decode_ms,
        preprocess=prepared.preprocess_ms,
        queue=result.queue_ms,
        inference=result.inference_ms,
        postprocess=postprocess_s * 1000,
    )
