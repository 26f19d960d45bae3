"""The YOLOv1 loss in PyTorch, for training. See docs/loss.md for the contract."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from model.loss_core import ConfidenceTarget, LossResult, Reduction, compute_loss

__all__ = ["LossResult", "YoloLoss", "yolo_loss"]


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
    layout: str = "cells",
) -> LossResult:
    """YOLOv1 loss (Redmon et al. 2016, eq. 3; docs/loss.md).

    ``predictions``: ``(N, S, S, 5B + C)`` (or ``(N, S*S*(5B+C))`` with
    ``layout="darknet"``); ``labels``: N float tensors ``(k, 5)`` of
    ``(class_id, cx, cy, w, h)`` in fractions of the image. Computed in float32
    (float64 stays float64) even under autocast.
    """
    dtype = torch.float64 if predictions.dtype == torch.float64 else torch.float32
    device = predictions.device

    def as_array(a):  # NumPy targets -> tensors beside the predictions
        t = torch.as_tensor(a, device=device)
        return t.to(dtype) if t.is_floating_point() else t

    with torch.autocast(device_type=device.type, enabled=False):
        return compute_loss(
            torch,
            predictions.to(dtype),
            labels,
            S=S,
            B=B,
            C=C,
            lambda_coord=lambda_coord,
            lambda_noobj=lambda_noobj,
            confidence_target=confidence_target,
            reduction=reduction,
            layout=layout,
            as_array=as_array,
            detach=torch.Tensor.detach,
        )


class YoloLoss(nn.Module):
    """``nn.Module`` wrapper of :func:`yolo_loss` for training loops."""

    def __init__(
        self,
        S: int = 7,
        B: int = 2,
        C: int = 20,
        lambda_coord: float = 5.0,
        lambda_noobj: float = 0.5,
        confidence_target: ConfidenceTarget = "iou",
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__()
        self.kwargs = dict(
            S=S,
            B=B,
            C=C,
            lambda_coord=lambda_coord,
            lambda_noobj=lambda_noobj,
            confidence_target=confidence_target,
            reduction=reduction,
        )

    def forward(self, predictions: torch.Tensor, labels: Sequence[torch.Tensor]) -> LossResult:
        return yolo_loss(predictions, labels, **self.kwargs)
