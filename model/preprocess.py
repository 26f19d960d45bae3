"""Image decoding and pre-processing shared by training, the CLI and the API (no torch)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

from model.config import ModelConfig


class ImageDecodeError(ValueError):
    """The bytes are not an image this service can read."""


def decode_image(data: bytes, *, max_pixels: int | None = None) -> Image.Image:
    """Bytes -> RGB PIL image, EXIF orientation applied.

    Raises :class:`ImageDecodeError` for empty, unreadable or truncated data,
    and for images over ``max_pixels`` (checked from the header, before decoding).
    """
    if not data:
        raise ImageDecodeError("empty image")
    try:
        img = Image.open(io.BytesIO(data))
    except Exception as exc:  # PIL raises several types for bad data
        raise ImageDecodeError("the data is not a readable image (JPEG, PNG, WebP or BMP)") from exc
    w, h = img.size
    if max_pixels is not None and w * h > max_pixels:
        raise ImageTooLargeError(f"image of {w}x{h} pixels exceeds the limit of {max_pixels}")
    try:
        img.load()
        img = ImageOps.exif_transpose(img)
        return img.convert("RGB")
    except Exception as exc:
        raise ImageDecodeError(f"the {img.format or 'image'} data is truncated or corrupt") from exc


class ImageTooLargeError(ImageDecodeError):
    """The image has more pixels than allowed (a decompression bomb guard)."""


def resize_uint8(img: Image.Image, size: int) -> np.ndarray:
    """RGB image -> ``(size, size, 3)`` uint8, stretched as YOLOv1 does (no letterbox)."""
    return np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.uint8)


def to_input(batch_uint8: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """``(N, H, W, 3)`` uint8 -> ``(N, 3, H, W)`` float32 network input."""
    x = batch_uint8.astype(np.float32) / 255.0
    x = (x - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
