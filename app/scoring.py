"""Scoring predictions against labels: the loss of ``POST /v1/loss`` and, on request,
mAP@0.5 (``model.evaluate``), callable without HTTP. Raises :class:`InputError`."""

from __future__ import annotations

from typing import Any

import numpy as np

from app.errors import InputError
from app.schemas import Grid, ImageLoss, Label, LossMetrics, LossOptions, LossResponse, LossTerms
from model.evaluate import evaluate_grids
from model.layout import darknet_to_cells
from model.loss_core import TERMS, LossResult, darknet_cost
from model.loss_numpy import yolo_loss_numpy


def as_grids(preds: Any, layout: str, grid: Grid, max_images: int) -> np.ndarray:
    """The predictions as ``(N, S, S, 5B + C)`` float64, whatever layout they came in."""
    S, B, C = grid.S, grid.B, grid.C
    try:
        arr = np.asarray(preds, dtype=np.float64)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InputError(422, f"predictions must be a regular numeric array: {exc}") from exc
    ch = 5 * B + C
    expected = f"(N, {S}, {S}, {ch})" if layout == "cells" else f"(N, {S * S * ch})"
    if arr.ndim != (4 if layout == "cells" else 2) or arr.shape[0] == 0:
        raise InputError(
            422,
            f"predictions must have shape {expected} for S={S}, B={B}, "
            f"C={C} (layout {layout}), got {arr.shape}",
        )
    if arr.shape[0] > max_images:
        raise InputError(413, f"at most {max_images} images per request, got {arr.shape[0]}")
    try:
        return darknet_to_cells(arr, S=S, B=B, C=C) if layout == "darknet" else arr
    except ValueError as exc:
        raise InputError(422, str(exc)) from exc


def as_label_arrays(labels: list[list[Label]]) -> list[np.ndarray]:
    return [
        np.array([[x.class_id, *x.box] for x in image], dtype=np.float64).reshape(-1, 5)
        for image in labels
    ]


def _terms(get: Any) -> LossTerms:
    return LossTerms(**{("class_" if k == "class" else k): float(get(k)) for k in TERMS})


def _per_image(r: LossResult, n: int, cost: np.ndarray) -> list[ImageLoss]:
    return [
        ImageLoss(
            loss=float(r.per_image["total"][i]),
            terms=_terms(lambda k, i=i: r.per_image[k][i]),
            darknet_cost=float(cost[i]),
            objects=int(r.objects[i]),
            dropped_objects=int(r.dropped[i]),
        )
        for i in range(n)
    ]


def _metrics(arr: np.ndarray, lab: list[np.ndarray], grid: Grid, names: list[str]) -> LossMetrics:
    m = evaluate_grids(arr, lab, S=grid.S, B=grid.B, C=grid.C)
    names = names if len(names) == grid.C else [f"class{i}" for i in range(grid.C)]
    return LossMetrics(
        map50=None if np.isnan(m.map) else m.map, ap50={names[c]: v for c, v in m.ap.items()}
    )


def score(
    preds: Any,
    labels: list[list[Label]],
    opts: LossOptions,
    grid: Grid,
    class_names: list[str],
    max_images: int,
) -> LossResponse:
    """The loss (and mAP with ``opts.metrics``) of ``preds`` against ``labels``."""
    arr = as_grids(preds, opts.layout, grid, max_images)
    if len(labels) != arr.shape[0]:
        raise InputError(422, f"labels has {len(labels)} lists for {arr.shape[0]} images")
    lab = as_label_arrays(labels)
    try:
        r = yolo_loss_numpy(
            arr,
            lab,
            S=grid.S,
            B=grid.B,
            C=grid.C,
            lambda_coord=opts.lambda_coord,
            lambda_noobj=opts.lambda_noobj,
            confidence_target=opts.confidence_target,
        )
    except ValueError as exc:
        raise InputError(422, str(exc)) from exc
    if not np.isfinite(r.per_image["total"]).all():
        raise InputError(422, "predictions are too large: the loss overflows")
    cost = darknet_cost(r.per_image, opts.lambda_coord, opts.lambda_noobj)  # (N,)
    return LossResponse(
        loss=float(r.total),
        terms=_terms(lambda k: r.terms[k]),
        darknet_cost=float(cost.sum()),
        per_image=_per_image(r, arr.shape[0], cost),
        grid=grid,
        metrics=_metrics(arr, lab, grid, class_names) if opts.metrics else None,
    )
