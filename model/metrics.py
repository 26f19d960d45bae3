"""Detection metrics: VOC average precision and mAP at an IoU threshold (NumPy, no torch).

Follows the PASCAL VOC devkit (voc_eval): detections of a class sorted by
decreasing score; each is matched to the ground truth of that class with the
highest IoU in its image; a match needs IoU at least the threshold (0.5), as the
official devkit's ``VOCevaldet.m`` (``ov >= 0.5``; py-faster-rcnn's
``voc_eval.py`` uses ``>``); a second detection of a matched object is a false
positive; a detection matched to a "difficult" object counts neither as
a true nor a false positive, and difficult objects are not counted in recall.
IoU uses continuous coordinates (no "+1" pixel).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from model.boxes import box_iou


def average_precision(recall: np.ndarray, precision: np.ndarray, *, method: str = "all") -> float:
    """AP from a precision/recall curve (detections sorted by decreasing score).

    ``method="all"``: VOC2010+ all-point interpolation, the area under the
    monotone (right-to-left maximum) precision envelope.
    ``method="11point"``: VOC2007, mean over recall r in {0, 0.1, ..., 1} of the
    highest precision at recall >= r (0 where none).
    """
    rec = np.asarray(recall, dtype=np.float64)
    prec = np.asarray(precision, dtype=np.float64)
    if method == "11point":
        ap = 0.0
        for r in np.linspace(0.0, 1.0, 11):
            above = prec[rec >= r]
            ap += (above.max() if above.size else 0.0) / 11.0
        return float(ap)
    if method != "all":
        raise ValueError(f"method must be 'all' or '11point', got {method!r}")
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.concatenate([[0.0], prec, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


@dataclass
class ImageDetections:
    """One image's detections: ``boxes`` ``(K, 4)`` xyxy, ``scores`` ``(K,)``,
    ``class_ids`` ``(K,)``."""

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray


@dataclass
class ImageTruth:
    """One image's ground truth: ``boxes`` ``(M, 4)`` xyxy, ``class_ids`` ``(M,)``,
    ``difficult`` ``(M,)`` (None: none is difficult)."""

    boxes: np.ndarray
    class_ids: np.ndarray
    difficult: np.ndarray | None = None


@dataclass
class MAPResult:
    map: float  # mean of per-class AP over classes with at least one non-difficult object
    ap: dict[int, float] = field(default_factory=dict)  # class -> AP
    n_truth: dict[int, int] = field(default_factory=dict)  # class -> non-difficult objects


@dataclass
class ClassMatches:
    """One class's detections over a data set, by decreasing score: ``scores``, ``tp``
    and ``fp`` ``(K,)`` (a detection of a difficult object is neither), and ``npos``,
    its non-difficult objects."""

    scores: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    npos: int


def match_class(
    detections: Sequence[ImageDetections],
    truths: Sequence[ImageTruth],
    c: int,
    *,
    iou_threshold: float = 0.5,
) -> ClassMatches:
    """Match class ``c``'s detections to its objects, the devkit's way; images are paired
    by position. Each detection's best object (highest IoU, the first of a tie) does not
    depend on the others, so it is array work; the devkit's walk down the ranks then
    comes to this: the first detection to reach an object at ``iou_threshold`` is a
    true positive, later ones are false positives, and a difficult object's are neither."""
    gt_boxes, gt_diff = [], []
    for t in truths:
        m = np.asarray(t.class_ids).reshape(-1) == c
        gt_boxes.append(np.asarray(t.boxes, dtype=np.float64).reshape(-1, 4)[m])
        d = np.zeros(m.sum(), bool) if t.difficult is None else np.asarray(t.difficult, bool)[m]
        gt_diff.append(d)
    npos = int(sum((~d).sum() for d in gt_diff))
    first_gt = np.cumsum([0] + [len(g) for g in gt_boxes])  # (images + 1,) into all objects
    scores, best_gt, best_iou = [], [], []
    for i, d in enumerate(detections):
        m = np.asarray(d.class_ids).reshape(-1) == c
        k = int(m.sum())
        scores.append(np.asarray(d.scores, dtype=np.float64).reshape(-1)[m])
        gts = gt_boxes[i]
        if k == 0 or len(gts) == 0:
            best_gt.append(np.full(k, -1))
            best_iou.append(np.zeros(k))
            continue
        ious = box_iou(np.asarray(d.boxes, dtype=np.float64).reshape(-1, 4)[m], gts)  # (k, m)
        best = np.argmax(ious, axis=1)
        best_gt.append(first_gt[i] + best)
        best_iou.append(ious[np.arange(k), best])
    scores_a = np.concatenate(scores) if scores else np.zeros(0)
    order = np.argsort(-scores_a, kind="stable")
    gt = np.concatenate(best_gt).astype(np.int64)[order] if scores else np.zeros(0, np.int64)
    iou = np.concatenate(best_iou)[order] if scores else np.zeros(0)
    hit = (gt >= 0) & (iou >= iou_threshold)
    all_difficult = np.concatenate(gt_diff) if first_gt[-1] else np.zeros(1, dtype=bool)
    counted = hit & ~all_difficult[np.where(hit, gt, 0)]
    at = np.flatnonzero(counted)
    first = np.zeros(len(order), dtype=bool)  # the first detection of its object
    first[at[np.unique(gt[at], return_index=True)[1]]] = True
    tp = first.astype(np.float64)
    fp = (~hit | (counted & ~first)).astype(np.float64)
    return ClassMatches(scores_a[order], tp, fp, npos)


def evaluate_map(
    detections: Sequence[ImageDetections],
    truths: Sequence[ImageTruth],
    num_classes: int,
    *,
    iou_threshold: float = 0.5,
    method: str = "all",
) -> MAPResult:
    """VOC-style mAP over a data set; images are paired by position."""
    if len(detections) != len(truths):
        raise ValueError(f"{len(detections)} detection lists for {len(truths)} images")
    result = MAPResult(map=float("nan"))
    aps = []
    for c in range(num_classes):
        m = match_class(detections, truths, c, iou_threshold=iou_threshold)
        result.n_truth[c] = m.npos
        if m.npos == 0:
            continue
        tp_c, fp_c = np.cumsum(m.tp), np.cumsum(m.fp)
        rec = tp_c / m.npos
        prec = tp_c / np.maximum(tp_c + fp_c, np.finfo(np.float64).eps)
        result.ap[c] = average_precision(rec, prec, method=method)
        aps.append(result.ap[c])
    result.map = float(np.mean(aps)) if aps else float("nan")
    return result


@dataclass
class OperatingPoint:
    """The lowest score threshold at which the detections kept reach ``precision``."""

    threshold: float
    precision: float  # of the detections scoring at least ``threshold``
    recall: float
    detections: int

    def calibration(self, target: float, data: str, images: int) -> dict:
        """As a model's metadata records it (``calibration``)."""
        return {
            "conf_threshold": round(self.threshold, 4),
            "precision": round(self.precision, 4),
            "recall": round(self.recall, 4),
            "target_precision": target,
            "data": data,
            "images": images,
        }


def score_at_precision(
    detections: Sequence[ImageDetections],
    truths: Sequence[ImageTruth],
    num_classes: int,
    target: float,
    *,
    iou_threshold: float = 0.5,
) -> OperatingPoint | None:
    """Pool every class's matches, sort by score and return the lowest threshold whose
    kept detections have precision >= ``target`` (the most recall at that precision);
    None when no threshold reaches it."""
    parts = [
        match_class(detections, truths, c, iou_threshold=iou_threshold) for c in range(num_classes)
    ]
    scores = np.concatenate([p.scores for p in parts])
    tp = np.concatenate([p.tp for p in parts])
    fp = np.concatenate([p.fp for p in parts])
    npos = sum(p.npos for p in parts)
    if not len(scores) or npos == 0:
        return None
    order = np.argsort(-scores, kind="stable")
    scores, tp_c, fp_c = scores[order], np.cumsum(tp[order]), np.cumsum(fp[order])
    # A threshold keeps every detection of a tied score: look at the last of each tie.
    last = np.r_[scores[1:] != scores[:-1], True]
    prec = tp_c / np.maximum(tp_c + fp_c, np.finfo(np.float64).eps)
    ok = np.flatnonzero(last & (prec >= target) & (tp_c > 0))
    if not len(ok):
        return None
    k = ok[-1]
    return OperatingPoint(float(scores[k]), float(prec[k]), float(tp_c[k] / npos), int(k + 1))
