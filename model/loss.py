"""The YOLOv1 loss in PyTorch, for training. See docs/loss.md for the contract."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

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
    ``per_image`` always holds ``(N,)`` tensors ("total" and each term)."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]
    per_image: dict[str, torch.Tensor]
    objects: torch.Tensor  # (N,) objects assigned to a cell
    dropped: torch.Tensor  # (N,) objects dropped because their cell was taken


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
    """YOLOv1 loss (Redmon et al. 2016, eq. 3).

    ``predictions``: ``(N, S, S, 5B + C)`` (or ``(N, S*S*(5B+C))`` with
    ``layout="darknet"``); ``labels``: N float tensors ``(k, 5)`` of
    ``(class_id, cx, cy, w, h)`` in fractions of the image. Computed in float32
    (float64 stays float64) even under autocast.
    """
    if layout == "darknet":
        predictions = darknet_to_cells(predictions, S=S, B=B, C=C)
    elif layout != "cells":
        raise ValueError(f"layout must be 'cells' or 'darknet', got {layout!r}")
    check_config(tuple(predictions.shape), S, B, C, confidence_target, reduction)
    dtype = torch.float64 if predictions.dtype == torch.float64 else torch.float32
    device = predictions.device
    targets = build_targets(labels, predictions.shape[0], S, C)
    t = {
        k: torch.as_tensor(v, device=device).to(dtype if v.dtype.kind == "f" else None)
        for k, v in target_arrays(targets, S, B).items()
    }
    with torch.autocast(device_type=device.type, enabled=False):
        terms = loss_terms(
            torch,
            predictions.to(dtype),
            t,
            S=S,
            B=B,
            C=C,
            lambda_coord=lambda_coord,
            lambda_noobj=lambda_noobj,
            confidence_target=confidence_target,
            detach=torch.Tensor.detach,
        )
    per_image = dict(terms)
    per_image["total"] = torch.stack([terms[k] for k in TERMS]).sum(0)
    return LossResult(
        total=reduce(per_image["total"], reduction),
        terms={k: reduce(terms[k], reduction) for k in TERMS},
        per_image=per_image,
        objects=torch.as_tensor(targets.objects),
        dropped=torch.as_tensor(targets.dropped),
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
