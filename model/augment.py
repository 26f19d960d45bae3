"""Augmentation as in the YOLOv1 paper (NumPy + OpenCV, no torch).

Random scaling and translation of up to 20% of the image size, exposure and
saturation scaled by up to 1.5x in HSV space, and a horizontal flip; boxes follow.

OpenCV because this runs beside the training step on the same cores: its resampling
and per-plane arithmetic make an image in about a quarter of the time Pillow's affine
transform and NumPy on interleaved pixels took (README, "Fine-tuning").
"""

from __future__ import annotations

import cv2
import numpy as np

# One thread per call: augmentation runs in threads of its own beside the training step
# (model.train.Batches), which already owns the cores.
cv2.setNumThreads(0)

GREY = (127, 127, 127)  # what the shifted image shows where the original has no pixels


def scale_translate(
    img: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    *,
    jitter: float = 0.2,
    flip: bool | None = False,
    keep_whole: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """``img`` ``(H, W, 3)`` uint8, ``labels`` ``(k, 5)`` (class, cx, cy, w, h) fractions.

    Scales about the centre by ``s`` in [1 - jitter, 1 + jitter] and shifts by up
    to ``jitter`` of the image in x and y, bilinear, grey where the image has no
    pixels. Boxes are clipped to the image; a box keeping less than 40% of its area is
    dropped. ``flip``: then mirror left to right (None: with probability 1/2, drawn
    after the scale and shift), as :func:`hflip` would. ``keep_whole``: the same draws,
    narrowed (:func:`whole_scale_shift`) so that no object lying wholly inside the image
    is cut.
    """
    H, W = img.shape[:2]
    s = rng.uniform(1 - jitter, 1 + jitter)
    tx, ty = rng.uniform(-jitter, jitter, 2)
    if keep_whole:
        s, tx, ty = whole_scale_shift(labels, s, tx, ty, jitter)
    if flip is None:
        flip = bool(rng.random() < 0.5)
    # Each output pixel reads the input at in = (out - centre - t) / s + centre, in
    # coordinates where pixel k spans [k, k + 1); OpenCV indexes pixel centres, hence
    # the half pixels.
    c = W / 2 - (W / 2 + tx * W) / s
    f = H / 2 - (H / 2 + ty * H) / s
    back = np.array([[1 / s, 0, (0.5 / s) + c - 0.5], [0, 1 / s, (0.5 / s) + f - 0.5]])
    out = cv2.warpAffine(
        np.ascontiguousarray(img), back, (W, H), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT, borderValue=GREY,
    )  # fmt: skip
    if flip:
        out = cv2.flip(out, 1)
    if len(labels) == 0:
        return out, labels.reshape(0, 5)
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
    return out, new[keep]


def whole_scale_shift(
    labels: np.ndarray, s: float, tx: float, ty: float, jitter: float
) -> tuple[float, float, float]:
    """A scale ``s`` and shift ``(tx, ty)`` drawn as :func:`scale_translate` draws them,
    moved so that the objects of ``labels`` ``(k, 5)`` that lie wholly inside the image
    (none of their sides on its border) stay inside: the scale's draw is mapped onto the
    scales at which their union fits, then each shift's onto the shifts that keep it in
    (uniform draws stay uniform). The paper's scaling and shifting cuts most objects
    that nearly fill the image, so a model seldom sees one whole; with this it does. No
    whole object: the draws as they came."""
    lab = np.asarray(labels, dtype=np.float64).reshape(-1, 5)
    x1, x2 = lab[:, 1] - lab[:, 3] / 2, lab[:, 1] + lab[:, 3] / 2
    y1, y2 = lab[:, 2] - lab[:, 4] / 2, lab[:, 2] + lab[:, 4] / 2
    edge = 1e-3  # a side this close to the border is on it: the object is cut already
    whole = (x1 > edge) & (y1 > edge) & (x2 < 1 - edge) & (y2 < 1 - edge)
    if not whole.any():
        return s, tx, ty
    ux1, uy1, ux2, uy2 = x1[whole].min(), y1[whole].min(), x2[whole].max(), y2[whole].max()

    def onto(v: float, a: float, b: float) -> float:
        # v, drawn uniform in [-jitter, jitter], moved uniformly onto [a, b]
        if jitter == 0:
            return min(max(v, a), b)
        return a + (v + jitter) / (2 * jitter) * (b - a)

    # the union no larger than the image (cap >= 1: the whole objects are inside it)
    cap = min(1 / (ux2 - ux1), 1 / (uy2 - uy1))
    s = 1 + onto(s - 1, -jitter, min(jitter, cap - 1))

    def shift(t: float, lo_side: float, hi_side: float) -> float:
        # x -> (x - 0.5) * s + 0.5 + t keeps [lo_side, hi_side] in [0, 1] for t in [lo, hi]
        lo, hi = -(lo_side - 0.5) * s - 0.5, 0.5 - (hi_side - 0.5) * s
        a, b = max(lo, -jitter), min(hi, jitter)
        if a > b:  # the whole objects sit further off-centre than jitter shifts
            a, b = lo, hi
        return onto(t, a, b)

    return s, shift(tx, ux1, ux2), shift(ty, uy1, uy2)


def hsv_jitter(img: np.ndarray, rng: np.random.Generator, *, factor: float = 1.5) -> np.ndarray:
    """Scale HSV value (exposure) and saturation by random factors in [1/factor, factor].

    Exact in HSV without converting: with V = max(r, g, b), a channel c becomes
    V - (V - c) * f for saturation f (capped where saturation would pass 1),
    and scaling every channel scales V and leaves hue and saturation alone.
    """
    exposure = np.float32(np.exp(rng.uniform(-np.log(factor), np.log(factor))))
    sat = np.exp(rng.uniform(-np.log(factor), np.log(factor)))
    # Planes, not interleaved pixels: every operation below runs on contiguous memory.
    r, g, b = cv2.split(img)  # (H, W) uint8 each
    v = cv2.max(cv2.max(r, g), b).astype(np.float32)
    if sat > 1:
        low = cv2.min(cv2.min(r, g), b).astype(np.float32)
        f = np.minimum(np.float32(sat), v / np.maximum(v - low, np.float32(1e-6)))
    else:
        f = np.full_like(v, sat)
    # (v - (v - c) * f) * exposure, as c * gain + offset: two operations a plane.
    gain = f * exposure
    offset = v * (1 - f) * exposure + np.float32(0.5)
    planes = []
    for c in (r, g, b):
        x = c.astype(np.float32)
        x *= gain
        x += offset
        np.clip(x, 0, 255, out=x)
        planes.append(x.astype(np.uint8))
    return cv2.merge(planes)


def hflip(img: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    out = labels.copy()
    out[:, 1] = 1.0 - out[:, 1]
    return np.ascontiguousarray(img[:, ::-1]), out


def augment(
    img: np.ndarray, labels: np.ndarray, rng: np.random.Generator, *, keep_whole: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """The full training augmentation of one ``(H, W, 3)`` uint8 image and its labels;
    ``keep_whole``: the share of images whose scaling and shifting cut no whole object
    (drawn only when above 0, so that the paper's augmentation draws as it always did)."""
    whole = keep_whole > 0 and bool(rng.random() < keep_whole)
    img, labels = scale_translate(img, labels, rng, flip=None, keep_whole=whole)
    return hsv_jitter(img, rng), labels
