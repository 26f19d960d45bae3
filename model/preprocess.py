"""Image decoding and pre-processing shared by training, the CLI and the API (no torch)."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

from model.config import ModelConfig


class ImageDecodeError(ValueError):
    """The bytes are not an image this service can read."""


SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP")


def decode_image(
    data: bytes, *, max_pixels: int | None = None, formats: tuple[str, ...] | None = None
) -> Image.Image:
    """Bytes -> RGB PIL image, EXIF orientation applied, any mode converted to RGB.

    Raises :class:`ImageDecodeError` for empty, unreadable or truncated data,
    :class:`UnsupportedFormatError` for a format outside ``formats``, and
    :class:`ImageTooLargeError` for images over ``max_pixels`` (checked from
    the header, before the pixels are decoded).
    """
    if not data:
        raise ImageDecodeError("empty image")
    try:
        img = Image.open(io.BytesIO(data), formats=None)
    except Exception as exc:  # PIL raises several types for bad data
        raise ImageDecodeError(
            "the data is not a readable image (send JPEG, PNG, WebP or BMP)"
        ) from exc
    if formats is not None and img.format not in formats:
        raise UnsupportedFormatError(
            f"unsupported image format {img.format}; send one of {', '.join(formats)}"
        )
    w, h = img.size
    if max_pixels is not None and w * h > max_pixels:
        raise ImageTooLargeError(f"image of {w}x{h} pixels exceeds the limit of {max_pixels}")
    try:
        with warnings.catch_warnings():
            # Past max_pixels we refuse above; PIL's own bomb warning is noise here.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
        img = ImageOps.exif_transpose(img)
        if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
            # Transparent pixels show as a viewer shows them (on white), not as
            # whatever colour they happen to store.
            rgba = img.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return img.convert("RGB")
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(str(exc)) from exc
    except Exception as exc:
        raise ImageDecodeError(f"the {img.format or 'image'} data is truncated or corrupt") from exc


class ImageTooLargeError(ImageDecodeError):
    """The image has more pixels than allowed (a decompression bomb guard)."""


class UnsupportedFormatError(ImageDecodeError):
    """A readable image in a format the service does not take."""


def resize_uint8(img: Image.Image, size: int) -> np.ndarray:
    """RGB image -> ``(size, size, 3)`` uint8, stretched as YOLOv1 does (no letterbox)."""
    return np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.uint8)


def to_input(batch_uint8: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """``(N, H, W, 3)`` uint8 -> ``(N, 3, H, W)`` float32 network input."""
    x = batch_uint8.astype(np.float32) / 255.0
    x = (x - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
