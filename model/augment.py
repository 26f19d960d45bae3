"""Augmentation as in the YOLOv1 paper (NumPy + Pillow, no torch).

Random scaling and translation of up to 20% of the image size, exposure and
saturation scaled by up to 1.5x in HSV space, and a horizontal flip; boxes follow.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def scale_translate(
    img: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    *,
    jitter: float = 0.2,
    flip: bool | None = False,
) -> tuple[np.ndarray, np.ndarray]:
    """``img`` ``(H, W, 3)`` uint8, ``labels`` ``(k, 5)`` (class, cx, cy, w, h) fractions.

    Scales about the centre by ``s`` in [1 - jitter, 1 + jitter] and shifts by up
    to ``jitter`` of the image in x and y. Boxes are clipped to the image; a
    box keeping less than 40% of its area is dropped. ``flip``: then mirror left to
    right (None: with probability 1/2, drawn after the scale and shift), in the same
    resampling pass: :func:`hflip` afterwards, without its copy of the image.
    """
    H, W = img.shape[:2]
    s = rng.uniform(1 - jitter, 1 + jitter)
    tx, ty = rng.uniform(-jitter, jitter, 2)
    if flip is None:
        flip = bool(rng.random() < 0.5)
    # PIL maps each output pixel back to the input: in = (out - centre - t) / s + centre,
    # at pixel centres; mirrored, output x reads where x' = W - x would have.
    a, e = 1 / s, 1 / s
    c = W / 2 - (W / 2 + tx * W) / s
    f = H / 2 - (H / 2 + ty * H) / s
    if flip:
        a, c = -a, a * W + c
    out = Image.fromarray(img).transform(
        (W, H), Image.AFFINE, (a, 0, c, 0, e, f), Image.BILINEAR, fillcolor=(127, 127, 127)
    )
    if len(labels) == 0:
        return np.asarray(out), labels.reshape(0, 5)
    cx = (labels[:, 1] - 0.5) * s + 0.5 + tx
    cy = (labels[:, 2] - 0.5) * s + 0.5 + ty
    w, h = labels[:, 3] * s, labels[:, 4] * s
    x1, y1 = np.clip(cx - w / 2, 0, 1), np.clip(cy - h / 2, 0, 1)
    x2, y2 = np.clip(cx + w / 2, 0, 1), np.clip(cy + h / 2, 0, 1)
    kept_area = (x2 - x1) * (y2 - y1)
    keep = (kept_area >= 0.4 * w * h) & (x2 - x1 > 1e-3) & (y2 - y1 > 1e-3)
    new = np.stack([labels[:, 0], (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], 1)
    if flip:
        new[:, 1] = 1.0 - new[:, 1]
    return np.asarray(out), new[keep]


def hsv_jitter(img: np.ndarray, rng: np.random.Generator, *, factor: float = 1.5) -> np.ndarray:
    """Scale HSV value (exposure) and saturation by random factors in [1/factor, factor].

    Exact in HSV without converting: with V = max(r, g, b), a channel c becomes
    V - (V - c) * f for saturation f (capped where saturation would pass 1),
    and scaling every channel scales V and leaves hue and saturation alone.
    """
    exposure = np.exp(rng.uniform(-np.log(factor), np.log(factor)))
    sat = np.exp(rng.uniform(-np.log(factor), np.log(factor)))
    x = img.astype(np.float32)
    # Per-channel maximum/minimum: much faster than reducing over a last axis of 3.
    v = np.maximum(np.maximum(x[..., 0], x[..., 1]), x[..., 2])[..., None]
    if sat > 1:
        low = np.minimum(np.minimum(x[..., 0], x[..., 1]), x[..., 2])[..., None]
        f = np.minimum(np.float32(sat), v / np.maximum(v - low, np.float32(1e-6)))
    else:
        f = np.float32(sat)
    # x = (v - (v - x) * f) * exposure + 0.5, in place: the same float32 operations in
    # the same order (the same bits), without five image-sized temporaries.
    np.subtract(v, x, out=x)
    x *= f
    np.subtract(v, x, out=x)
    x *= np.float32(exposure)
    x += np.float32(0.5)
    np.clip(x, 0, 255, out=x)
    return x.astype(np.uint8)


def hflip(img: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    out = labels.copy()
    out[:, 1] = 1.0 - out[:, 1]
    return np.ascontiguousarray(img[:, ::-1]), out


def augment(
    img: np.ndarray, labels: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The full training augmentation of one ``(H, W, 3)`` uint8 image and its labels."""
    img, labels = scale_translate(img, labels, rng, flip=None)
    return hsv_jitter(img, rng), labels
