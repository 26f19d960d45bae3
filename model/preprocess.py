"""Image decoding and pre-processing shared by training, the CLI and the API (no torch)."""

from __future__ import annotations

import functools
import io
import warnings
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps

from model.config import ModelConfig


class ImageDecodeError(ValueError):
    """The bytes are not an image this service can read."""


def _reads_avif() -> bool:
    from PIL import features

    return bool(features.check("avif"))  # Pillow 11.2 and later, in its wheels


# What detection takes, and the image files a data set is read from: GIF and TIFF (their
# first frame or page), AVIF (what many web sites serve, so what people save from them)
# where this Pillow reads it.
SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF") + (
    ("AVIF",) if _reads_avif() else ()
)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff") + (
    (".avif",) if "AVIF" in SUPPORTED_FORMATS else ()
)
FORMAT_NAMES = ", ".join({"WEBP": "WebP"}.get(f, f) for f in SUPPORTED_FORMATS)  # for messages
# HEIF's major brands (ISO BMFF ``ftyp``): a file of these that Pillow cannot open is
# named as what it is. AVIF is HEIF too (``avif``; ``mif1`` fits either).
HEIF_BRANDS = (
    b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"
)  # fmt: skip


def decode_image(
    data: bytes, *, max_pixels: int | None = None, formats: tuple[str, ...] | None = None
) -> Image.Image:
    """Bytes -> RGB PIL image, EXIF orientation applied, any mode converted to RGB.

    Raises :class:`ImageDecodeError` for empty, unreadable or truncated data,
    :class:`UnsupportedFormatError` for a format outside ``formats``, and
    :class:`ImageTooLargeError` for images over ``max_pixels`` (checked from
    the header, before the pixels are decoded).
    """
    return finish_decode(_open(data, max_pixels, formats))


class AtSize(NamedTuple):
    """What :func:`decode_for_size` decoded."""

    image: Image.Image  # RGB, shrunk toward the network's input size
    size: tuple[int, int]  # the original (width, height) after EXIF orientation
    decoded_pixels: int  # the pixels decoded before shrinking (a JPEG: at its DCT scale)


def decode_for_size(
    data: bytes,
    size: int,
    *,
    max_pixels: int | None = None,
    formats: tuple[str, ...] | None = None,
) -> AtSize:
    """Like :func:`decode_image`, but only as many pixels as a ``size`` x ``size``
    network input needs: JPEG decodes at the smallest DCT scale (1/2, 1/4, 1/8) that
    keeps both sides at least :data:`REDUCE_GAP` x ``size``; other formats are shrunk
    by the largest whole factor that does. The result's ``size`` is the frame that
    boxes are reported in."""
    img = _open(data, max_pixels, formats)
    w, h = img.size
    keep = round(REDUCE_GAP * size)  # the final resize still averages over a few pixels
    if img.format == "JPEG":
        img.draft(img.mode, (keep, keep))
    if _transposed(img):
        w, h = h, w
    out = finish_decode(img)
    decoded = out.width * out.height
    factor = min(out.width // keep, out.height // keep)
    if factor >= 2:
        out = out.reduce(factor)
    return AtSize(out, (w, h), decoded)


# Decode to at least this many times the network's input size. bench_infer.py measures
# it against the full decode on held-out scenes (a third of them 12 MP JPEGs): with the
# one-pass resize, 1.5 and 2 gave the same mAP there (+0.0013), 1 moved it by +0.0048
# (0.008 on earlier scenes). 1.5 lets a 4000x3000 JPEG decode at 1/8 (500x375), 4 ms
# sooner than at 1/4.
REDUCE_GAP = 1.5


def _transposed(img: Image.Image) -> bool:
    """Does the EXIF orientation swap width and height (orientations 5 to 8)?"""
    try:
        return img.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except Exception:
        return False


def _open(data: bytes, max_pixels: int | None, formats: tuple[str, ...] | None) -> Image.Image:
    if not data:
        raise ImageDecodeError("empty image")
    try:
        img = Image.open(io.BytesIO(data), formats=None)
    except Exception as exc:  # PIL raises several types for bad data
        if data[4:8] == b"ftyp" and data[8:12] in HEIF_BRANDS:
            raise UnsupportedFormatError(
                "HEIC/HEIF images (what iPhones write by default) are not supported; "
                f"send {FORMAT_NAMES} (most phones can share a photo as JPEG)"
            ) from None
        raise ImageDecodeError(f"the data is not a readable image (send {FORMAT_NAMES})") from exc
    if img.format == "MPO":  # what many phones write: a JPEG with more frames after it
        img.format = "JPEG"
    if formats is not None and img.format not in formats:
        raise UnsupportedFormatError(
            f"unsupported image format {img.format}; send one of {', '.join(formats)}"
        )
    w, h = img.size
    if max_pixels is not None and w * h > max_pixels:
        raise ImageTooLargeError(f"image of {w}x{h} pixels exceeds the limit of {max_pixels}")
    return img


def finish_decode(img: Image.Image) -> Image.Image:
    """Load the pixels of an opened image, apply the EXIF orientation, composite
    transparency on white, 16-bit grey scaled to 8: the RGB image the network is shown,
    in serving and in training alike. Raises :class:`ImageDecodeError` for a truncated
    or corrupt file, :class:`UnsupportedFormatError` for 32-bit (TIFF) pixels."""
    try:
        with warnings.catch_warnings():
            # Past max_pixels we refuse above; PIL's own bomb warning is noise here.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
        # In place: the default copies the whole image even when nothing turns (12 MP:
        # ~20 ms and 36 MB more), and so does converting an image already RGB.
        ImageOps.exif_transpose(img, in_place=True)
        if img.mode in WIDE_GREY or (img.mode == "I" and img.format == "PNG"):
            img = _grey_to_8_bits(img)
        elif img.mode in ("I", "F"):  # TIFF's 32-bit pixels: no one way to show them
            kind = "integer" if img.mode == "I" else "floating-point"
            raise UnsupportedFormatError(
                f"{img.format} images of 32-bit {kind} pixels are not supported; "
                "send 8- or 16-bit images"
            )
        if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
            # Transparent pixels show as a viewer shows them (on white), not as
            # whatever colour they happen to store.
            rgba = img.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return img if img.mode == "RGB" else img.convert("RGB")
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(str(exc)) from exc
    except ImageDecodeError:
        raise
    except Exception as exc:
        raise ImageDecodeError(f"the {img.format or 'image'} data is truncated or corrupt") from exc


# Pillow's modes for 16-bit grey (a PNG or TIFF of depth 16: what OpenCV writes for
# uint16, and scientific and depth cameras; older Pillows open such a PNG as "I");
# other 16-bit PNGs open as 8-bit RGB(A) or LA.
WIDE_GREY = ("I;16", "I;16B", "I;16L")


def _grey_to_8_bits(img: Image.Image) -> Image.Image:
    """16-bit grey -> ``L``, 0..65535 onto 0..255 as a viewer shows it. Pillow's own
    conversion clips at 255: all but the darkest 1/256 of the range came out white.
    A grey ``tRNS`` transparency level (rare at this depth) is dropped."""
    wide = np.asarray(img, dtype=np.int64)  # (H, W)
    narrow = (np.clip(wide, 0, 65535) + 128) // 257
    return Image.fromarray(narrow.astype(np.uint8), "L")


class ImageTooLargeError(ImageDecodeError):
    """The image has more pixels than allowed (a decompression bomb guard)."""


class UnsupportedFormatError(ImageDecodeError):
    """A readable image in a format the service does not take."""


def resize_uint8(img: Image.Image, size: int) -> np.ndarray:
    """RGB image -> ``(size, size, 3)`` uint8, stretched as YOLOv1 does (no letterbox)."""
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    resized = rgb.resize((size, size), Image.BILINEAR, reducing_gap=RESIZE_GAP)
    return np.asarray(resized, dtype=np.uint8)


# Pillow first averages whole blocks of pixels (``reduce``) while the bilinear pass that
# follows still shrinks by at least this much: 640x480 -> 224 in 0.86 ms against 1.47
# for the bilinear filter alone, 1008x756 in 1.3 against 2.9. bench_infer.py's held-out
# scenes: mAP@0.5 0.8612 against 0.8596 with the filter alone.
RESIZE_GAP = 1.01


def to_input(batch_uint8: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """``(N, H, W, 3)`` uint8 -> ``(N, 3, H, W)`` float32 network input,
    ``(x / 255 - mean) / std`` per channel."""
    lut = _input_table(tuple(cfg.mean), tuple(cfg.std))  # (3, 256)
    n, h, w, _ = batch_uint8.shape
    out = np.empty((n, 3, h, w), np.float32)
    # A uint8 has 256 values: looking each pixel up in its channel's table, straight
    # into the channel-first layout, is the same float32 numbers as the arithmetic
    # (tested) in a third of the time, with no transposing copy.
    for c in range(3):
        np.take(lut[c], batch_uint8[..., c], out=out[:, c])
    return out


@functools.lru_cache(maxsize=8)
def _input_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    x = np.arange(256, dtype=np.float32)[None, :] / np.float32(255.0)  # (1, 256)
    table = (x - np.asarray(mean, np.float32)[:, None]) / np.asarray(std, np.float32)[:, None]
    table.setflags(write=False)
    return table  # (3, 256)
