"""The YOLOv1 loss in NumPy: the twin of ``model.loss`` that the API uses (no torch).

Computed in float64. See docs/loss.md for the contract.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from model.layout import darknet_to_cells
from model.loss_core import (
    TERMS,
    ConfidenceTarget,
    Reduction,
    check_config,
    loss_terms,
    reduce,
    target_arrays,
)
from model.targets import build_targets


@dataclass
class LossResult:
    """Loss of a batch. ``total`` and ``terms`` follow ``reduction``;
    ``per_image`` always has one value per image."""

    total: np.ndarray | float
    terms: dict[str, np.ndarray | float]
    per_image: dict[str, np.ndarray] = field(default_factory=dict)  # "total" and each term: (N,)
    objects: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (N,)
    dropped: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (N,)


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
    layout: str = "cells",
) -> LossResult:
    """NumPy YOLOv1 loss; same arguments and meaning as ``model.loss.yolo_loss``."""
    pred = np.asarray(predictions, dtype=np.float64)
    if layout == "darknet":
        pred = darknet_to_cells(pred, S=S, B=B, C=C)
    elif layout != "cells":
        raise ValueError(f"layout must be 'cells' or 'darknet', got {layout!r}")
    check_config(pred.shape, S, B, C, confidence_target, reduction)
    if not np.isfinite(pred).all():
        raise ValueError("predictions contain NaN or infinite values")
    targets = build_targets(labels, pred.shape[0], S, C)
    terms = loss_terms(
        np,
        pred,
        target_arrays(targets, S, B),
        S=S,
        B=B,
        C=C,
        lambda_coord=lambda_coord,
        lambda_noobj=lambda_noobj,
        confidence_target=confidence_target,
    )
    per_image = dict(terms)
    per_image["total"] = sum(terms[k] for k in TERMS)
    return LossResult(
        total=reduce(per_image["total"], reduction),
        terms={k: reduce(terms[k], reduction) for k in TERMS},
        per_image=per_image,
        objects=targets.objects,
        dropped=targets.dropped,
    )
