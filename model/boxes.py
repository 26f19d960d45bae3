"""Box operations on NumPy arrays (no torch: the API process imports this).

Conventions: boxes are ``(N, 4)`` float arrays, either ``xyxy`` (x1, y1, x2, y2)
or ``cxcywh`` (centre x, centre y, width, height), in any consistent unit
(fractions of the image or pixels). Every function accepts ``N == 0``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.floating]


def _as_boxes(boxes: ArrayLike) -> FloatArray:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {arr.shape}")
    return arr


def cxcywh_to_xyxy(boxes: ArrayLike) -> FloatArray:
    """``(N, 4)`` cxcywh -> ``(N, 4)`` xyxy."""
    b = _as_boxes(boxes)
    half = b[:, 2:] / 2
    return np.concatenate([b[:, :2] - half, b[:, :2] + half], axis=1)


def xyxy_to_cxcywh(boxes: ArrayLike) -> FloatArray:
    """``(N, 4)`` xyxy -> ``(N, 4)`` cxcywh."""
    b = _as_boxes(boxes)
    return np.concatenate([(b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2]], axis=1)


def box_area(boxes: ArrayLike) -> FloatArray:
    """``(N, 4)`` xyxy -> ``(N,)`` areas (0 for degenerate boxes)."""
    b = _as_boxes(boxes)
    return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)


def box_iou(boxes1: ArrayLike, boxes2: ArrayLike) -> FloatArray:
    """Pairwise IoU of ``(N, 4)`` and ``(M, 4)`` xyxy boxes -> ``(N, M)``.

    Continuous coordinates (no darknet/VOC "+1" pixel). A pair whose union is
    empty has IoU 0.
    """
    a, b = _as_boxes(boxes1), _as_boxes(boxes2)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])  # (N, M, 2)
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])  # (N, M, 2)
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]  # (N, M)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def nms(boxes: ArrayLike, scores: ArrayLike, iou_threshold: float) -> NDArray[np.int64]:
    """Greedy non-maximum suppression.

    ``boxes`` ``(N, 4)`` xyxy, ``scores`` ``(N,)``. Returns the kept indices
    sorted by decreasing score. A box is suppressed when its IoU with a kept,
    higher-scoring box is strictly greater than ``iou_threshold``.
    """
    b = _as_boxes(boxes)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(s) != len(b):
        raise ValueError(f"{len(b)} boxes but {len(s)} scores")
    order = np.argsort(-s, kind="stable")
    areas = box_area(b)
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        lt = np.maximum(b[i, :2], b[rest, :2])
        rb = np.minimum(b[i, 2:], b[rest, 2:])
        wh = np.clip(rb - lt, 0, None)
        inter = wh[:, 0] * wh[:, 1]
        union = areas[i] + areas[rest] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(
    boxes: ArrayLike, scores: ArrayLike, classes: ArrayLike, iou_threshold: float
) -> NDArray[np.int64]:
    """Class-wise NMS: boxes of different classes never suppress each other.

    ``boxes`` ``(N, 4)`` xyxy, ``scores`` ``(N,)``, ``classes`` ``(N,)`` ints.
    Returns kept indices sorted by decreasing score.
    """
    b = _as_boxes(boxes)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    c = np.asarray(classes).reshape(-1)
    if len(b) == 0:
        return np.zeros(0, dtype=np.int64)
    # Shift each class to its own region so one NMS pass handles every class.
    offset = c.astype(np.float64)[:, None] * (b.max() - b.min() + 1.0)
    keep = nms(b + offset, s, iou_threshold)
    return keep


def decode_predictions(
    pred: ArrayLike,
    *,
    S: int,
    B: int,
    C: int,
    conf_threshold: float = 0.2,
    iou_threshold: float = 0.5,
    max_detections: int = 100,
    classes: list[int] | None = None,
) -> dict[str, np.ndarray]:
    """Turn one image's raw prediction grid into final detections.

    ``pred`` is ``(S, S, 5B + C)`` in the loss layout (per cell B blocks of
    ``x, y, sqrt_w, sqrt_h, conf``, then C class scores). Each predictor box is
    scored with the paper's class-specific confidence ``conf * P(class)``
    (both clipped to [0, 1], since the network regresses them freely) for its
    best class; boxes scoring at least ``conf_threshold`` go through class-wise
    NMS. Returns ``boxes`` ``(K, 4)`` xyxy in fractions of the image (clipped to
    [0, 1]), ``scores`` ``(K,)`` and ``class_ids`` ``(K,)``, by decreasing score.
    """
    p = np.asarray(pred, dtype=np.float32)
    if p.shape != (S, S, 5 * B + C):
        raise ValueError(f"prediction must have shape {(S, S, 5 * B + C)}, got {p.shape}")
    box = p[..., : 5 * B].reshape(S, S, B, 5)  # (S, S, B, 5)
    cls = np.clip(p[..., 5 * B :], 0.0, 1.0)  # (S, S, C)
    if classes is not None:
        allowed = np.zeros(C, dtype=bool)
        allowed[[c for c in classes if 0 <= c < C]] = True
        cls = np.where(allowed, cls, 0.0)
    cls_id = cls.argmax(-1)  # (S, S)
    cls_p = cls.max(-1)  # (S, S)
    conf = np.clip(box[..., 4], 0.0, 1.0)  # (S, S, B)
    score = conf * cls_p[..., None]  # (S, S, B)
    rows, cols = np.meshgrid(np.arange(S), np.arange(S), indexing="ij")
    cx = (cols[..., None] + box[..., 0]) / S
    cy = (rows[..., None] + box[..., 1]) / S
    w, h = box[..., 2] ** 2, box[..., 3] ** 2
    xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1).reshape(-1, 4)
    score = score.reshape(-1)
    cid = np.broadcast_to(cls_id[..., None], (S, S, B)).reshape(-1)
    sel = np.flatnonzero(score >= conf_threshold)
    xyxy, score, cid = np.clip(xyxy[sel], 0.0, 1.0), score[sel], cid[sel]
    keep = batched_nms(xyxy, score, cid, iou_threshold)[:max_detections]
    return {
        "boxes": xyxy[keep].astype(np.float32),
        "scores": score[keep].astype(np.float32),
        "class_ids": cid[keep].astype(np.int64),
    }
