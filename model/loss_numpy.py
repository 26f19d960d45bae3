"""The YOLOv1 loss in NumPy: the twin of ``model.loss`` that the API uses (no torch).

Computed in float64. See docs/loss.md for the contract.

The torch loss works on dense ``(N, S, S, ...)`` targets, which autograd wants. Here
only the M cells that hold an object are gathered (M is at most a few per image),
every per-object term is computed on ``(M, ...)`` arrays, and the no-object term is
the one pass over the whole grid: the responsible predictors' confidences are zeroed
and the rest summed. Same rules (``model.targets.assign_cells``, ``model.grid``), a
fraction of the array work: per-call cost no longer grows with S x S x (5B + C)
temporaries.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from model.grid import corner_parts, iou_parts
from model.loss_core import (
    ConfidenceTarget,
    LossConfig,
    LossResult,
    Reduction,
    check_config,
    loss_result,
)
from model.targets import assign_cells

__all__ = ["LossResult", "yolo_loss_numpy"]


def yolo_loss_numpy(
    predictions: np.ndarray,
    labels: Sequence[object],
    *,
    S: int = 7,
    B: int = 2,
    C: int = 20,
    lambda_coord: float = 5.0,
    lambda_noobj: float = 0.5,
    confidence_target: ConfidenceTarget = "iou",
    reduction: Reduction = "mean",
) -> LossResult:
    """NumPy YOLOv1 loss; same arguments and meaning as ``model.loss.yolo_loss``.
    Raises ``ValueError`` for NaN or infinite predictions."""
    cfg = LossConfig(S, B, C, lambda_coord, lambda_noobj, confidence_target)
    pred = np.asarray(predictions, dtype=np.float64)
    check_config(pred.shape, cfg, reduction)
    if not np.isfinite(pred).all():
        raise ValueError("predictions contain NaN or infinite values")
    N = pred.shape[0]
    a = assign_cells(labels, N, S, C)
    M = len(a.img)
    m = np.arange(M)

    cell = pred[a.img, a.row, a.col]  # (M, 5B + C)
    boxes = cell[:, : 5 * B].reshape(M, B, 5)  # (M, B, 5)
    cls = cell[:, 5 * B :]  # (M, C)
    # The predictors' boxes in fractions of the image (model.grid.cell_boxes' rule).
    pcx = (a.col[:, None] + boxes[..., 0]) / S  # (M, B)
    pcy = (a.row[:, None] + boxes[..., 1]) / S
    pw, ph = boxes[..., 2] ** 2, boxes[..., 3] ** 2
    tcx, tcy, tw, th = (a.labels[:, k : k + 1] for k in range(1, 5))  # (M, 1) each
    iou = iou_parts(np, corner_parts(pcx, pcy, pw, ph), corner_parts(tcx, tcy, tw, th))  # (M, B)
    rmse = np.sqrt((pcx - tcx) ** 2 + (pcy - tcy) ** 2 + (pw - tw) ** 2 + (ph - th) ** 2)
    # darknet's rule: highest IoU; when every IoU is 0, the nearest box (first on ties).
    best = np.where(iou.max(1, initial=0.0) > 0, iou.argmax(1), rmse.argmin(1))  # (M,)
    r = boxes[m, best]  # (M, 5): the responsible predictor

    tx, ty = tcx[:, 0] * S - a.col, tcy[:, 0] * S - a.row
    xy_err = (r[:, 0] - tx) ** 2 + (r[:, 1] - ty) ** 2
    wh_err = (r[:, 2] - np.sqrt(tw[:, 0])) ** 2 + (r[:, 3] - np.sqrt(th[:, 0])) ** 2
    target_conf = iou[m, best] if confidence_target == "iou" else 1.0
    obj_err = (r[:, 4] - target_conf) ** 2
    cls_diff = cls.copy()
    cls_diff[m, a.labels[:, 0].astype(np.int64)] -= 1.0
    cls_err = (cls_diff**2).sum(1)

    conf2 = pred[..., 4 : 5 * B : 5] ** 2  # (N, S, S, B)
    conf2[a.img, a.row, a.col, best] = 0.0
    noobj = conf2.reshape(N, -1).sum(1)  # (N,)

    def per_image(v: np.ndarray) -> np.ndarray:
        return np.bincount(a.img, weights=v, minlength=N)  # (N,)

    terms = {
        "coord_xy": lambda_coord * per_image(xy_err),
        "coord_wh": lambda_coord * per_image(wh_err),
        "obj": per_image(obj_err),
        "noobj": lambda_noobj * noobj,
        "class": per_image(cls_err),
    }
    return loss_result(terms, a.objects, a.dropped, reduction)
