"""COCO's formats and its mAP@[.5:.95], next to the VOC mAP@0.5 of ``model.evaluate``.

The numbers come from pycocotools itself (the ``train`` extra; never imported by the
API): ground truth and results are written in COCO's JSON layout and handed to
``COCOeval``, so they are the figures anyone else's COCO tooling gives.

- ``image_id`` is the image's index in the data set, ``category_id`` the model's
  class id (``categories`` lists the names), boxes are ``[x, y, w, h]`` in pixels;
- VOC's difficult objects become ``iscrowd`` regions, which COCOeval ignores the
  way VOC ignores difficult ones (a detection on them neither helps nor hurts).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from model.metrics import ImageDetections, ImageTruth


def _xywh(boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(N, 4)`` xyxy fractions of the image -> ``(N, 4)`` xywh pixels."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * np.tile(size, 2)
    return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)


def ground_truth(
    truths: Sequence[ImageTruth], sizes: Sequence[tuple[int, int]], class_names: list[str]
) -> dict[str, Any]:
    """A COCO instances document; ``sizes`` are each image's (width, height)."""
    images, annotations = [], []
    for i, (t, size) in enumerate(zip(truths, sizes, strict=True)):
        images.append({"id": i, "width": int(size[0]), "height": int(size[1])})
        diff = t.difficult if t.difficult is not None else np.zeros(len(t.class_ids), bool)
        for box, k, d in zip(_xywh(t.boxes, size), t.class_ids, diff, strict=True):
            annotations.append(
                {
                    # COCOeval marks matches by annotation id, so ids start at 1, never 0.
                    "id": len(annotations) + 1,
                    "image_id": i,
                    "category_id": int(k),
                    "bbox": [float(v) for v in box],
                    "area": float(box[2] * box[3]),
                    "iscrowd": int(bool(d)),
                }
            )
    return {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k, "name": n} for k, n in enumerate(class_names)],
    }


def results(
    detections: Sequence[ImageDetections], sizes: Sequence[tuple[int, int]]
) -> list[dict[str, Any]]:
    """COCO's results list: one entry per detection."""
    out = []
    for i, (d, size) in enumerate(zip(detections, sizes, strict=True)):
        for box, k, s in zip(_xywh(d.boxes, size), d.class_ids, d.scores, strict=True):
            out.append(
                {
                    "image_id": i,
                    "category_id": int(k),
                    "bbox": [float(v) for v in box],
                    "score": float(s),
                }
            )
    return out


def coco_map(gt: dict[str, Any], dets: list[dict[str, Any]]) -> dict[str, float | None]:
    """pycocotools' bbox evaluation: ``map`` (@[.5:.95]), ``map50``, ``map75``, and
    the area and recall figures of its summary, by name (None where the data have no
    objects of that kind)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    names = (
        "map", "map50", "map75", "map_small", "map_medium", "map_large",
        "ar1", "ar10", "ar100", "ar_small", "ar_medium", "ar_large",
    )  # fmt: skip
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):  # pycocotools prints its progress
        coco_gt = COCO()
        coco_gt.dataset = {"info": {}, **gt}
        coco_gt.createIndex()
        if not dets:  # loadRes refuses an empty list
            return dict.fromkeys(names, 0.0)
        coco_dt = coco_gt.loadRes([dict(d) for d in dets])  # it adds fields in place
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # -1 is COCOeval's "no objects of this kind".
    return {n: None if v < 0 else float(v) for n, v in zip(names, ev.stats, strict=True)}
