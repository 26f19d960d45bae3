"""The YOLOv1 loss (Redmon et al. 2016, equation 3) on dense per-cell grids.

This module never imports torch: the array namespace ``xp`` is passed in, and only
operations NumPy and torch share are used. ``model.loss`` (torch, for training)
calls :func:`loss_terms`; ``model.loss_numpy`` (the API) shares the checks, the
result and the reduction, and gathers the object cells instead. docs/loss.md is
the contract.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from model.grid import cell_boxes, corner_parts, iou_parts
from model.targets import GridTargets, build_targets

TERMS = ("coord_xy", "coord_wh", "obj", "noobj", "class")
ConfidenceTarget = Literal["iou", "one"]
Reduction = Literal["mean", "sum", "none"]


@dataclass(frozen=True)
class LossConfig:
    """The grid and the weights: everything but the arrays. Defaults: the paper's."""

    S: int = 7
    B: int = 2
    C: int = 20
    lambda_coord: float = 5.0
    lambda_noobj: float = 0.5
    confidence_target: ConfidenceTarget = "iou"


def responsible(
    xp: Any, boxes: Any, obj: Any, truth: Any, idx: Any, predictor_ids: Any
) -> tuple[Any, Any]:
    """The responsible predictor of every object cell, and each predictor's IoU.

    ``boxes`` ``(N, S, S, B, 5)`` and ``truth`` ``(N, S, S, 4)`` (cx, cy, w, h), both
    float64 and without gradient: a float32 IoU of a small box can cancel to 0,
    where the rule below then falls back to RMSE and float32 and float64 pick
    different predictors. Returns ``resp`` ``(N, S, S, B)`` bool and ``iou``
    ``(N, S, S, B)``."""
    pcx, pcy, pw, ph = cell_boxes(xp, boxes, idx)  # (N, S, S, B) each
    tcx, tcy, tw, th = (truth[..., k : k + 1] for k in range(4))  # (N, S, S, 1) each
    iou = iou_parts(xp, corner_parts(pcx, pcy, pw, ph), corner_parts(tcx, tcy, tw, th))
    rmse = xp.sqrt((pcx - tcx) ** 2 + (pcy - tcy) ** 2 + (pw - tw) ** 2 + (ph - th) ** 2)
    # darknet's rule: highest IoU; when every IoU is 0, the nearest box (RMSE).
    # argmax/argmin return the first extremum, so ties go to the lowest index.
    best = xp.where(xp.amax(iou, -1) > 0, iou.argmax(-1), rmse.argmin(-1))  # (N, S, S)
    return (predictor_ids == best[..., None]) & obj[..., None], iou


def loss_terms(
    xp: Any,
    pred: Any,
    t: dict[str, Any],
    cfg: LossConfig,
    *,
    wide: Callable[[Any], Any] = lambda a: a,
    narrow: Callable[[Any], Any] = lambda a: a,
) -> dict[str, Any]:
    """Per-image loss terms, each of shape ``(N,)``.

    ``pred`` ``(N, S, S, 5B + C)`` in the cell layout; ``t`` holds the arrays of
    :func:`target_arrays`, already converted to ``xp`` arrays on ``pred``'s device
    (``box64`` and ``idx64`` in float64, the rest in ``pred``'s dtype). ``wide``
    turns predictions into float64 without gradient (the predictor choice and the
    IoU target carry none: the paper's and darknet's rescore); ``narrow`` brings
    the IoU back to ``pred``'s dtype.
    """
    S, B = cfg.S, cfg.B
    N = pred.shape[0]
    boxes = pred[..., : 5 * B].reshape(N, S, S, B, 5)  # (N, S, S, B, 5)
    cls = pred[..., 5 * B :]  # (N, S, S, C)
    obj = t["obj"]  # (N, S, S)
    resp, iou = responsible(xp, wide(boxes), obj, t["box64"], t["idx64"], t["predictor_ids"])

    x, y = boxes[..., 0], boxes[..., 1]
    sw, sh, conf = boxes[..., 2], boxes[..., 3], boxes[..., 4]
    xy_err = (x - t["xy"][..., 0:1]) ** 2 + (y - t["xy"][..., 1:2]) ** 2
    wh_err = (sw - t["sqrt_wh"][..., 0:1]) ** 2 + (sh - t["sqrt_wh"][..., 1:2]) ** 2
    target_conf = narrow(iou) if cfg.confidence_target == "iou" else 1.0
    obj_err = (conf - target_conf) ** 2
    cls_err = ((cls - t["onehot"]) ** 2).sum(-1)  # (N, S, S)

    def masked_sum(mask: Any, value: Any) -> Any:
        return xp.where(mask, value, 0.0).reshape(N, -1).sum(-1)  # (N,)

    return {
        "coord_xy": cfg.lambda_coord * masked_sum(resp, xy_err),
        "coord_wh": cfg.lambda_coord * masked_sum(resp, wh_err),
        "obj": masked_sum(resp, obj_err),
        "noobj": cfg.lambda_noobj * masked_sum(~resp, conf**2),
        "class": masked_sum(obj, cls_err),
    }


def check_config(pred_shape: tuple[int, ...], cfg: LossConfig, reduction: str) -> None:
    """Raise ``ValueError`` with the expected shape when the arguments do not fit."""
    S, B, C, confidence_target = cfg.S, cfg.B, cfg.C, cfg.confidence_target
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
        "box64": targets.box,
        "idx64": np.arange(S, dtype=np.float64),
        "xy": targets.xy,
        "sqrt_wh": targets.sqrt_wh,
        "onehot": targets.onehot,
        "predictor_ids": np.arange(B, dtype=np.int64),
    }


def darknet_cost(terms: dict[str, Any], lambda_coord: float, lambda_noobj: float) -> Any:
    """What darknet's detection layer leaves in ``*l.cost`` for the same outputs:
    ``sum(delta**2)`` with ``delta = scale * (target - output)``, which weighs each
    weighted term once more, ``λcoord·(coord_xy + coord_wh) + obj + λnoobj·noobj +
    class`` (object and class scales 1, as the paper has them). A figure only: darknet
    trains on ``delta``, the negative gradient of half the loss here, not of this cost
    (docs/loss.md). Scalars or arrays alike."""
    coord = terms["coord_xy"] + terms["coord_wh"]
    return lambda_coord * coord + terms["obj"] + lambda_noobj * terms["noobj"] + terms["class"]


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
    cfg: LossConfig,
    *,
    reduction: Reduction,
    as_array: Callable[[Any], Any],
    wide: Callable[[Any], Any] = lambda a: a,
    narrow: Callable[[Any], Any] = lambda a: a,
) -> LossResult:
    """Everything between the array library's wrapper and :func:`loss_terms`:
    checks, targets, the image total and the reduction. ``as_array`` turns a NumPy
    target array into ``xp`` on ``pred``'s device (float arrays in ``pred``'s dtype,
    except the float64 ones whose name ends in 64)."""
    check_config(tuple(pred.shape), cfg, reduction)
    targets = build_targets(labels, pred.shape[0], cfg.S, cfg.C)
    t = {
        k: as_array(v, wide=k.endswith("64"))
        for k, v in target_arrays(targets, cfg.S, cfg.B).items()
    }
    terms = loss_terms(xp, pred, t, cfg, wide=wide, narrow=narrow)
    return loss_result(terms, targets.objects, targets.dropped, reduction)


def loss_result(
    terms: dict[str, Any], objects: Any, dropped: Any, reduction: Reduction
) -> LossResult:
    """Per-image ``(N,)`` terms -> the result: the image totals and the reduction."""
    per_image = dict(terms)
    per_image["total"] = sum(terms[k] for k in TERMS)
    return LossResult(
        total=reduce(per_image["total"], reduction),
        terms={k: reduce(terms[k], reduction) for k in TERMS},
        per_image=per_image,
        objects=objects,
        dropped=dropped,
    )
