"""The YOLOv1 loss (Redmon et al. 2016, equation 3), written once for NumPy and torch.

This module never imports torch: the array namespace ``xp`` (``numpy`` or
``torch``) is passed in, and only operations both libraries share are used.
``model.loss`` (torch, for training) and ``model.loss_numpy`` (for the API)
call :func:`loss_terms`. docs/loss.md is the contract.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from model.layout import darknet_to_cells
from model.targets import GridTargets, build_targets

TERMS = ("coord_xy", "coord_wh", "obj", "noobj", "class")
ConfidenceTarget = Literal["iou", "one"]
Reduction = Literal["mean", "sum", "none"]


def loss_terms(
    xp: Any,
    pred: Any,
    t: dict[str, Any],
    *,
    S: int,
    B: int,
    C: int,
    lambda_coord: float,
    lambda_noobj: float,
    confidence_target: ConfidenceTarget,
    detach: Any = lambda a: a,
) -> dict[str, Any]:
    """Per-image loss terms, each of shape ``(N,)``.

    ``pred`` ``(N, S, S, 5B + C)`` in the cell layout; ``t`` holds the arrays of
    a :class:`GridTargets` (``obj``, ``box``, ``xy``, ``sqrt_wh``, ``onehot``)
    already converted to ``xp`` arrays on ``pred``'s device and dtype.
    ``detach`` stops gradients through the IoU (a no-op for NumPy).
    """
    N = pred.shape[0]
    boxes = pred[..., : 5 * B].reshape(N, S, S, B, 5)  # (N, S, S, B, 5)
    cls = pred[..., 5 * B :]  # (N, S, S, C)
    obj = t["obj"]  # (N, S, S)

    # Choosing the responsible predictor is not differentiable; neither is the
    # IoU used as the confidence target (the paper's and darknet's rescore).
    with_grad_off = detach(boxes)
    rows = xp.reshape(t["rows"], (1, S, 1, 1))
    cols = xp.reshape(t["cols"], (1, 1, S, 1))
    pcx = (cols + with_grad_off[..., 0]) / S  # (N, S, S, B)
    pcy = (rows + with_grad_off[..., 1]) / S
    pw = with_grad_off[..., 2] ** 2
    ph = with_grad_off[..., 3] ** 2
    tcx, tcy, tw, th = (t["box"][..., k : k + 1] for k in range(4))  # (N, S, S, 1) each
    iw = xp.minimum(pcx + pw / 2, tcx + tw / 2) - xp.maximum(pcx - pw / 2, tcx - tw / 2)
    ih = xp.minimum(pcy + ph / 2, tcy + th / 2) - xp.maximum(pcy - ph / 2, tcy - th / 2)
    inter = xp.where(iw > 0, iw, 0.0) * xp.where(ih > 0, ih, 0.0)
    union = pw * ph + tw * th - inter
    iou = xp.where(union > 0, inter / xp.where(union > 0, union, 1.0), 0.0)  # (N, S, S, B)
    rmse = xp.sqrt((pcx - tcx) ** 2 + (pcy - tcy) ** 2 + (pw - tw) ** 2 + (ph - th) ** 2)
    # darknet's rule: highest IoU; when every IoU is 0, the nearest box (RMSE).
    # argmax/argmin return the first extremum, so ties go to the lowest index.
    best = xp.where(xp.amax(iou, -1) > 0, iou.argmax(-1), rmse.argmin(-1))  # (N, S, S)
    resp = (t["predictor_ids"] == best[..., None]) & obj[..., None]  # (N, S, S, B)

    x, y = boxes[..., 0], boxes[..., 1]
    sw, sh, conf = boxes[..., 2], boxes[..., 3], boxes[..., 4]
    xy_err = (x - t["xy"][..., 0:1]) ** 2 + (y - t["xy"][..., 1:2]) ** 2
    wh_err = (sw - t["sqrt_wh"][..., 0:1]) ** 2 + (sh - t["sqrt_wh"][..., 1:2]) ** 2
    target_conf = iou if confidence_target == "iou" else 1.0
    obj_err = (conf - target_conf) ** 2
    cls_err = ((cls - t["onehot"]) ** 2).sum(-1)  # (N, S, S)

    def masked_sum(mask: Any, value: Any) -> Any:
        return xp.where(mask, value, 0.0).reshape(N, -1).sum(-1)  # (N,)

    return {
        "coord_xy": lambda_coord * masked_sum(resp, xy_err),
        "coord_wh": lambda_coord * masked_sum(resp, wh_err),
        "obj": masked_sum(resp, obj_err),
        "noobj": lambda_noobj * masked_sum(~resp, conf**2),
        "class": masked_sum(obj, cls_err),
    }


def check_config(
    pred_shape: tuple[int, ...],
    S: int,
    B: int,
    C: int,
    confidence_target: str,
    reduction: str,
) -> None:
    """Raise ``ValueError`` with the expected shape when the arguments do not fit."""
    if S < 1 or B < 1 or C < 1:
        raise ValueError(f"S, B and C must be positive, got S={S}, B={B}, C={C}")
    expected = (S, S, 5 * B + C)
    if len(pred_shape) != 4 or tuple(pred_shape[1:]) != expected:
        raise ValueError(
            f"predictions must have shape (N, {S}, {S}, {5 * B + C}) for S={S}, B={B}, "
            f"C={C}, got {tuple(pred_shape)}"
        )
    if confidence_target not in ("iou", "one"):
        raise ValueError(f"confidence_target must be 'iou' or 'one', got {confidence_target!r}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def target_arrays(targets: GridTargets, S: int, B: int) -> dict[str, Any]:
    """The NumPy arrays :func:`loss_terms` reads, before conversion to ``xp``."""
    import numpy as np

    return {
        "obj": targets.obj,
        "box": targets.box,
        "xy": targets.xy,
        "sqrt_wh": targets.sqrt_wh,
        "onehot": targets.onehot,
        "rows": np.arange(S, dtype=np.float64),
        "cols": np.arange(S, dtype=np.float64),
        "predictor_ids": np.arange(B, dtype=np.int64),
    }


def reduce(per_image: Any, reduction: Reduction) -> Any:
    if reduction == "mean":
        return per_image.mean()
    if reduction == "sum":
        return per_image.sum()
    return per_image


@dataclass
class LossResult:
    """Loss of a batch, as arrays of the library that computed it.

    ``total`` and ``terms`` follow ``reduction``; ``per_image`` always holds
    ``(N,)`` arrays ("total" and each term); ``objects`` and ``dropped`` are
    ``(N,)`` NumPy int arrays: objects assigned to a cell, and objects dropped
    because their cell was already taken."""

    total: Any
    terms: dict[str, Any]
    per_image: dict[str, Any]
    objects: Any
    dropped: Any


def compute_loss(
    xp: Any,
    pred: Any,
    labels: Sequence[object],
    *,
    S: int,
    B: int,
    C: int,
    lambda_coord: float,
    lambda_noobj: float,
    confidence_target: ConfidenceTarget,
    reduction: Reduction,
    layout: str,
    as_array: Callable[[Any], Any],
    detach: Callable[[Any], Any] = lambda a: a,
) -> LossResult:
    """Everything between the array library's wrapper and :func:`loss_terms`:
    layout, checks, targets, the image total and the reduction. ``as_array``
    turns a NumPy target array into ``xp`` on ``pred``'s device and dtype."""
    if layout == "darknet":
        pred = darknet_to_cells(pred, S=S, B=B, C=C)
    elif layout != "cells":
        raise ValueError(f"layout must be 'cells' or 'darknet', got {layout!r}")
    check_config(tuple(pred.shape), S, B, C, confidence_target, reduction)
    targets = build_targets(labels, pred.shape[0], S, C)
    t = {k: as_array(v) for k, v in target_arrays(targets, S, B).items()}
    terms = loss_terms(
        xp,
        pred,
        t,
        S=S,
        B=B,
        C=C,
        lambda_coord=lambda_coord,
        lambda_noobj=lambda_noobj,
        confidence_target=confidence_target,
        detach=detach,
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
