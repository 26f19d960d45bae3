"""The YOLOv1 loss in NumPy: the twin of ``model.loss`` that the API uses (no torch).

Computed in float64. See docs/loss.md for the contract.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from model.loss_core import ConfidenceTarget, LossConfig, LossResult, Reduction, compute_loss

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
    if not np.isfinite(pred).all():
        raise ValueError("predictions contain NaN or infinite values")
    return compute_loss(
        np, pred, labels, cfg, reduction=reduction, as_array=lambda a, wide=False: a
    )
