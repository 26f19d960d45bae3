"""Label validation and assignment of objects to grid cells (NumPy, no torch).

Shared by the torch loss and its NumPy twin so both assign objects the same way.
See docs/loss.md for the conventions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GridTargets:
    """Per-cell regression targets for a batch of N images on an S x S grid."""

    obj: np.ndarray  # (N, S, S) bool: the cell holds an object
    box: np.ndarray  # (N, S, S, 4) float64: truth (cx, cy, w, h), fractions of the image
    xy: np.ndarray  # (N, S, S, 2) float64: centre offset inside the cell
    sqrt_wh: np.ndarray  # (N, S, S, 2) float64: sqrt(w), sqrt(h)
    onehot: np.ndarray  # (N, S, S, C) float64
    objects: np.ndarray  # (N,) int64: objects assigned to a cell
    dropped: np.ndarray  # (N,) int64: objects not trained: cell taken, or too small


def label_rows(labels: Sequence[object], n_images: int, C: int) -> tuple[np.ndarray, np.ndarray]:
    """Check every label and return all the rows, ``(K, 5)`` float64 in image order,
    with ``(N,)`` int64 counts per image.

    Each label row is ``(class_id, cx, cy, w, h)``, all box values fractions of
    the image. Raises ``ValueError`` naming the image and label index. The checks
    run once over the batch's rows together: per image they were most of the loss's
    time at batch 64."""
    if len(labels) != n_images:
        raise ValueError(f"got {len(labels)} label lists for {n_images} images")
    out: list[np.ndarray] = []
    for i, lab in enumerate(labels):
        if (
            type(lab) is np.ndarray
            and lab.ndim == 2
            and lab.shape[1] == 5
            and lab.dtype.kind in "fiu"
        ):
            out.append(lab)  # the common case, without a copy: concatenated below
            continue
        if hasattr(lab, "detach"):  # a torch tensor; stay torch-free otherwise
            lab = lab.detach().cpu().numpy()
        arr = np.asarray(lab, dtype=np.float64)
        if arr.size == 0:
            out.append(np.zeros((0, 5)))
            continue
        if arr.ndim != 2 or arr.shape[1] != 5:
            raise ValueError(
                f"image {i}: labels must have shape (k, 5) as (class_id, cx, cy, w, h), "
                f"got {arr.shape}"
            )
        out.append(arr)
    counts = np.fromiter((len(a) for a in out), np.int64, len(out))
    rows = np.concatenate(out, dtype=np.float64) if out else np.zeros((0, 5))  # (K, 5)
    if len(rows) and not _all_fine(rows, C):
        _check_rows(rows, counts, C)
    return rows, counts


def _all_fine(rows: np.ndarray, C: int) -> bool:
    """Every row valid, from the columns' extremes (NaN and infinities show there):
    a few array calls instead of one per check; :func:`_check_rows` finds the culprit."""
    lo, hi = rows.min(0).tolist(), rows.max(0).tolist()  # 5 floats each
    if not all(map(math.isfinite, lo + hi)):
        return False
    c = rows[:, 0]
    return (
        lo[0] >= 0 and hi[0] < C
        and lo[1] >= 0 and hi[1] <= 1 and lo[2] >= 0 and hi[2] <= 1
        and lo[3] > 0 and hi[3] <= 1 and lo[4] > 0 and hi[4] <= 1
        and bool((c == np.floor(c)).all())
    )  # fmt: skip


def _check_rows(rows: np.ndarray, counts: np.ndarray, C: int) -> None:
    """Vectorised checks of a batch's ``(K, 5)`` label rows, ``counts[i]`` of them from
    image i; the first bad row raises, named by image and index."""
    c, cx, cy, w, h = rows.T
    with np.errstate(invalid="ignore"):
        checks = [
            (~np.isfinite(rows).all(1), lambda r: f"non-finite value in {r.tolist()}"),
            (
                (c != np.floor(c)) | (c < 0) | (c >= C),
                lambda r: f"class_id {r[0]:g} is not an integer in [0, {C})",
            ),
            (
                (cx < 0) | (cx > 1) | (cy < 0) | (cy > 1),
                lambda r: f"centre ({r[1]:g}, {r[2]:g}) is outside [0, 1]",
            ),
            (
                (w <= 0) | (w > 1) | (h <= 0) | (h > 1),
                lambda r: f"width/height ({r[3]:g}, {r[4]:g}) must be in (0, 1]",
            ),
        ]
    bad = np.zeros(len(rows), dtype=bool)
    for mask, _ in checks:
        bad |= mask
    if not bad.any():
        return
    k = int(np.argmax(bad))
    ends = np.cumsum(counts)
    i = int(np.searchsorted(ends, k, side="right"))
    j = k - (int(ends[i - 1]) if i else 0)
    for mask, message in checks:
        if mask[k]:
            raise ValueError(f"image {i}, label {j}: {message(rows[k])}")


# darknet's fill_truth_region skips a box narrower or lower than this (after clipping).
MIN_TRAINED_SIZE = 0.005


def clip_to_image(rows: np.ndarray) -> np.ndarray:
    """``(K, 5)`` label rows -> the same with each box clipped to the image, its centre
    and size recomputed from the clipped corners (darknet's ``correct_boxes`` with no
    augmentation): what darknet trains on when a box crosses an edge."""
    half = rows[:, 3:5] / 2  # (K, 2)
    # A centre lies in [0, 1], so only the lower corner can fall below 0, the upper above 1.
    lo = np.maximum(rows[:, 1:3] - half, 0.0)  # (K, 2): x1, y1
    hi = np.minimum(rows[:, 1:3] + half, 1.0)  # (K, 2): x2, y2
    out = np.empty_like(rows)
    out[:, 0] = rows[:, 0]
    out[:, 1:3] = (lo + hi) / 2
    out[:, 3:5] = hi - lo
    return out


@dataclass(frozen=True)
class CellAssignment:
    """The objects that own a cell, M of them, in (image, row, col) order."""

    img: np.ndarray  # (M,) int64
    row: np.ndarray  # (M,) int64
    col: np.ndarray  # (M,) int64
    labels: np.ndarray  # (M, 5) float64: class_id, cx, cy, w, h (clipped to the image)
    objects: np.ndarray  # (N,) int64: objects assigned to a cell
    dropped: np.ndarray  # (N,) int64: objects not trained: cell taken, or too small


def assign_cells(labels: Sequence[object], n_images: int, S: int, C: int) -> CellAssignment:
    """Validate ``labels`` and assign each object to the cell holding its centre, as
    darknet's ``fill_truth_region`` does with no augmentation.

    Each box is first clipped to the image (:func:`clip_to_image`); a box then
    narrower or lower than :data:`MIN_TRAINED_SIZE` is dropped.
    ``row = min(floor(cy * S), S - 1)``, ``col = min(floor(cx * S), S - 1)``;
    when several objects share a cell the first listed wins. ``dropped`` counts
    both kinds.
    """
    allrows, counts = label_rows(labels, n_images, C)  # (K, 5), (N,)
    N = n_images
    img = np.repeat(np.arange(N), counts)  # (K,)
    rows = clip_to_image(allrows)  # (K, 5)
    kept = (rows[:, 3] >= MIN_TRAINED_SIZE) & (rows[:, 4] >= MIN_TRAINED_SIZE)
    if not kept.all():
        img, rows = img[kept], rows[kept]
    col = np.minimum(np.floor(rows[:, 1] * S), S - 1).astype(np.int64)
    row = np.minimum(np.floor(rows[:, 2] * S), S - 1).astype(np.int64)
    key = (img * S + row) * S + col
    # np.unique returns the first occurrence of each key, in key order: the first
    # listed wins, and the owners come out in (image, row, col) order.
    _, first = np.unique(key, return_index=True)
    objects = np.bincount(img[first], minlength=N).astype(np.int64)
    return CellAssignment(img[first], row[first], col[first], rows[first], objects,
                          counts - objects)  # fmt: skip


def build_targets(labels: Sequence[object], n_images: int, S: int, C: int) -> GridTargets:
    """:func:`assign_cells`, as dense per-cell targets."""
    a = assign_cells(labels, n_images, S, C)
    N = n_images
    obj = np.zeros((N, S, S), dtype=bool)
    box = np.zeros((N, S, S, 4))
    onehot = np.zeros((N, S, S, C))
    obj[a.img, a.row, a.col] = True
    box[a.img, a.row, a.col] = a.labels[:, 1:5]
    onehot[a.img, a.row, a.col, a.labels[:, 0].astype(np.int64)] = 1.0
    objects, dropped = a.objects, a.dropped
    cols = np.arange(S)[None, None, :]
    rows = np.arange(S)[None, :, None]
    xy = np.stack([box[..., 0] * S - cols, box[..., 1] * S - rows], axis=-1)
    xy = np.where(obj[..., None], xy, 0.0)
    sqrt_wh = np.sqrt(box[..., 2:4])
    return GridTargets(obj, box, xy, sqrt_wh, onehot, objects, dropped)
