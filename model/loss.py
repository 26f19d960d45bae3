"""The YOLOv1 loss in PyTorch, for training. See docs/loss.md for the contract."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from model.devices import host_to_device
from model.loss_core import ConfidenceTarget, LossConfig, LossResult, Reduction, compute_loss

__all__ = ["LossResult", "yolo_loss"]


def yolo_loss(
    predictions: torch.Tensor,
    labels: Sequence[torch.Tensor],
    *,
    S: int = 7,
    B: int = 2,
    C: int = 20,
    lambda_coord: float = 5.0,
    lambda_noobj: float = 0.5,
    confidence_target: ConfidenceTarget = "iou",
    reduction: Reduction = "mean",
) -> LossResult:
    """YOLOv1 loss (Redmon et al. 2016, eq. 3; docs/loss.md).

    ``predictions``: ``(N, S, S, 5B + C)``; ``labels``: N float tensors ``(k, 5)`` of
    ``(class_id, cx, cy, w, h)`` in fractions of the image (darknet's flat vectors:
    ``model.layout.darknet_to_cells`` first). Computed in float32 (float64 stays
    float64) even under autocast; the responsible predictor is chosen in float64.
    """
    cfg = LossConfig(S, B, C, lambda_coord, lambda_noobj, confidence_target)
    dtype = torch.float64 if predictions.dtype == torch.float64 else torch.float32
    device = predictions.device

    def as_array(a, wide: bool = False):  # NumPy targets -> tensors beside the predictions
        t = torch.from_numpy(np.ascontiguousarray(a))
        t = t.to(torch.float64 if wide else dtype) if t.is_floating_point() else t
        return host_to_device(t, device)

    with torch.autocast(device_type=device.type, enabled=False):
        return compute_loss(
            torch,
            predictions.to(dtype),
            labels,
            cfg,
            reduction=reduction,
            as_array=as_array,
            wide=lambda a: a.detach().to(torch.float64),
            narrow=lambda a: a.to(dtype),
        )
