"""From prediction grids and labels to VOC mAP, the one way (NumPy, no torch).

Training-time validation, ``yolov1 val``, the API's ``metrics: true`` and the
benchmarks all evaluate through :class:`Evaluator`, with darknet's rules:

- every class of a predictor box whose ``conf * P(class)`` reaches the threshold
  is a detection (darknet's ``validate_yolo``, threshold 0.001), then class-wise NMS
  at IoU 0.5 (at most ``MAX_DETECTIONS`` an image);
- a detection matches at IoU >= 0.5 (the devkit's ``VOCevaldet.m``), difficult
  objects neither help nor hurt (``model.metrics``);
- AP is the all-point area (VOC2010+), with the 11-point VOC2007 variant beside it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from model.boxes import cxcywh_to_xyxy, decode_predictions
from model.config import class_key
from model.metrics import ImageDetections, ImageTruth, MAPResult, evaluate_map

CONF_THRESHOLD = 0.001  # darknet's validate_yolo
NMS_IOU = 0.5
MAX_DETECTIONS = 300


def truth_of(labels: np.ndarray, difficult: np.ndarray | None = None) -> ImageTruth:
    """``(k, 5)`` labels ``(class_id, cx, cy, w, h)`` -> the image's truth in xyxy."""
    lab = np.asarray(labels, dtype=np.float64).reshape(-1, 5)
    return ImageTruth(cxcywh_to_xyxy(lab[:, 1:]), lab[:, 0].astype(np.int64), difficult)


class Evaluator:
    """Accumulates images, then scores them; ``add`` as batches come."""

    def __init__(
        self,
        S: int,
        B: int,
        C: int,
        *,
        conf_threshold: float = CONF_THRESHOLD,
        every_class: bool = True,
    ):
        """``every_class=False``: each box as its best class only, as the API shows it."""
        self.S, self.B, self.C = S, B, C
        self.conf_threshold = conf_threshold
        self.every_class = every_class
        self.detections: list[ImageDetections] = []
        self.truths: list[ImageTruth] = []
        self.sizes: list[tuple[int, int]] = []  # (width, height), where the caller knows them

    def add(
        self,
        grids: np.ndarray,
        labels: Sequence[np.ndarray],
        difficult: Sequence[np.ndarray | None] | None = None,
    ) -> None:
        """``grids`` ``(N, S, S, 5B + C)``; ``labels`` N ``(k, 5)`` arrays; ``difficult``
        N ``(k,)`` bool arrays or None."""
        if len(grids) != len(labels):
            raise ValueError(f"{len(grids)} grids for {len(labels)} label lists")
        diff = difficult if difficult is not None else [None] * len(labels)
        for g, lab, d in zip(grids, labels, diff, strict=True):
            out = decode_predictions(
                g,
                S=self.S,
                B=self.B,
                C=self.C,
                conf_threshold=self.conf_threshold,
                iou_threshold=NMS_IOU,
                max_detections=MAX_DETECTIONS,
                every_class=self.every_class,
            )
            self.detections.append(ImageDetections(out["boxes"], out["scores"], out["class_ids"]))
            self.truths.append(truth_of(lab, d))

    def result(self, *, method: str = "all") -> MAPResult:
        return evaluate_map(self.detections, self.truths, self.C, method=method)


def class_columns(model_names: Sequence[str], data_names: Sequence[str]) -> np.ndarray:
    """``(C_data,)``: for each class of the data, the model's column of the same name, or
    -1 where the model does not know it. Raises ValueError when no name is shared."""
    where = {class_key(name): i for i, name in enumerate(model_names)}
    cols = np.array([where.get(class_key(name), -1) for name in data_names], dtype=np.int64)
    if not (cols >= 0).any():
        raise ValueError(f"the model's classes {list(model_names)} and the data's "
                         f"{list(data_names)} share no name")  # fmt: skip
    return cols


def regrid_classes(grids: np.ndarray, cols: np.ndarray, B: int) -> np.ndarray:
    """``(N, S, S, 5B + C_model)`` -> ``(N, S, S, 5B + C_data)``: the class columns in the
    data's order (``cols`` from :func:`class_columns`); a class the model does not know
    gets probability 0, so it is never detected and scores AP 0 where it has objects."""
    boxes = grids[..., : 5 * B]  # (N, S, S, 5B)
    probs = grids[..., 5 * B :]  # (N, S, S, C_model)
    known = np.where(cols >= 0, cols, 0)
    out = np.where(cols >= 0, probs[..., known], 0.0).astype(grids.dtype)  # (N, S, S, C_data)
    return np.concatenate([boxes, out], axis=-1)


def evaluate_grids(
    grids: np.ndarray,
    labels: Sequence[np.ndarray],
    difficult: Sequence[np.ndarray | None] | None = None,
    *,
    S: int,
    B: int,
    C: int,
    method: str = "all",
) -> MAPResult:
    """VOC mAP@0.5 of ``(N, S, S, 5B + C)`` grids against their labels, in one call."""
    ev = Evaluator(S, B, C)
    ev.add(grids, labels, difficult)
    return ev.result(method=method)
