"""Box operations on NumPy arrays (no torch: the API process imports this).

Conventions: boxes are ``(N, 4)`` float arrays, either ``xyxy`` (x1, y1, x2, y2)
or ``cxcywh`` (centre x, centre y, width, height), in any consistent unit
(fractions of the image or pixels). Every function accepts ``N == 0``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from model.grid import cell_boxes, corners, iou_xyxy

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
    return iou_xyxy(np, a[:, None, :], b[None, :, :])  # (N, M)


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
    if len(order) <= 1:
        return order.astype(np.int64)
    if len(order) > NMS_MATRIX_MAX:
        return _nms_loop(b, order, iou_threshold)
    ob = b[order]
    # by[j, i]: box i, ranked above j, overlaps it past the threshold. A box that no
    # higher one overlaps is kept whatever the others do; only the rest are decided
    # one by one, in rank order (evaluation's 0.001 threshold sends hundreds of boxes
    # here, most of them uncontested).
    by = np.tril(iou_xyxy(np, ob[:, None, :], ob[None, :, :]) > iou_threshold, k=-1)
    keep = np.ones(len(order), dtype=bool)
    for j in np.flatnonzero(by.any(axis=1)):
        keep[j] = not (by[j, :j] & keep[:j]).any()
    return order[keep]


# Above this many boxes the (N, N) overlap matrix costs more than the loop that
# compares each kept box with the rest.
NMS_MATRIX_MAX = 1024


def _nms_loop(b: FloatArray, order: NDArray[np.int64], iou_threshold: float) -> NDArray[np.int64]:
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        order = rest[iou_xyxy(np, b[i], b[rest]) <= iou_threshold]
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
    every_class: bool = False,
    pre_nms_top_k: int = 3000,
) -> dict[str, np.ndarray]:
    """Turn one image's raw prediction grid into final detections.

    ``pred`` is ``(S, S, 5B + C)`` in the loss layout (per cell B blocks of
    ``x, y, sqrt_w, sqrt_h, conf``, then C class scores). Each predictor box is
    scored with the paper's class-specific confidence ``conf * P(class)``
    (both clipped to [0, 1], since the network regresses them freely): for its
    best class only (what the detect endpoint shows, one label per box), or with
    ``every_class`` for every class that reaches the threshold (darknet's
    ``validate_yolo`` and what evaluation uses). Boxes with a non-finite value are
    dropped; of those scoring at least ``conf_threshold`` the best ``pre_nms_top_k``
    go through class-wise NMS (which costs the square of its input: a grid of
    S=64, B=16 would otherwise send 65,536 boxes through it).
    Returns ``boxes`` ``(K, 4)`` xyxy in fractions of the image (clipped to
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
    conf = np.clip(box[..., 4], 0.0, 1.0)  # (S, S, B)
    xyxy = corners(np, *cell_boxes(np, box, np.arange(S, dtype=np.float32)))  # (S, S, B, 4)
    finite = np.isfinite(xyxy).all(-1) & np.isfinite(box[..., 4])  # (S, S, B)
    if every_class:
        score = conf[..., None] * cls[:, :, None, :]  # (S, S, B, C)
        score = np.where(finite[..., None] & np.isfinite(score), score, -1.0)
        b_idx, cid = np.divmod(np.flatnonzero(score.reshape(-1) >= conf_threshold), C)
        score = score.reshape(-1, C)[b_idx, cid]
    else:
        score = conf * cls.max(-1)[..., None]  # (S, S, B)
        score = np.where(finite & np.isfinite(score), score, -1.0).reshape(-1)
        b_idx = np.flatnonzero(score >= conf_threshold)
        cid = np.broadcast_to(cls.argmax(-1)[..., None], (S, S, B)).reshape(-1)[b_idx]
        score = score[b_idx]
    if len(score) > pre_nms_top_k:
        top = np.argsort(-score, kind="stable")[:pre_nms_top_k]
        b_idx, cid, score = b_idx[top], cid[top], score[top]
    xyxy = np.clip(xyxy.reshape(-1, 4)[b_idx], 0.0, 1.0)
    keep = batched_nms(xyxy, score, cid, iou_threshold)[:max_detections]
    return {
        "boxes": xyxy[keep].astype(np.float32),
        "scores": score[keep].astype(np.float32),
        "class_ids": cid[keep].astype(np.int64),
    }
