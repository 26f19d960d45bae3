"""Box ops and VOC mAP against hand-worked cases."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from model.boxes import (
    NMS_MATRIX_MAX,
    batched_nms,
    box_iou,
    cxcywh_to_xyxy,
    decode_predictions,
    nms,
    xyxy_to_cxcywh,
)
from model.evaluate import evaluate_grids
from model.metrics import (
    ImageDetections,
    ImageTruth,
    average_precision,
    evaluate_map,
    score_at_precision,
)


def test_conversions_round_trip_and_empty():
    b = np.array([[0.5, 0.5, 0.2, 0.4], [0.1, 0.9, 0.2, 0.2]])
    assert np.allclose(cxcywh_to_xyxy(b), [[0.4, 0.3, 0.6, 0.7], [0.0, 0.8, 0.2, 1.0]])
    assert np.allclose(xyxy_to_cxcywh(cxcywh_to_xyxy(b)), b)
    assert cxcywh_to_xyxy(np.zeros((0, 4))).shape == (0, 4)
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 2)
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).shape == (0,)
    assert batched_nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0), 0.5).shape == (0,)


def test_iou_hand_values():
    a = np.array([[0, 0, 2, 2]])
    b = np.array([[1, 1, 3, 3], [0, 0, 2, 2], [5, 5, 6, 6], [0, 0, 0, 0]])
    assert np.allclose(box_iou(a, b), [[1 / 7, 1.0, 0.0, 0.0]])


def test_nms_and_classwise():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10]])
    scores = np.array([0.9, 0.8, 0.7, 0.95])
    assert list(nms(boxes, scores, 0.5)) == [3, 2]
    assert list(batched_nms(boxes, scores, np.array([0, 0, 0, 1]), 0.5)) == [3, 0, 2]


def _reference_nms(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list[int]:
    """Greedy NMS written out: take the best box left, drop those it overlaps."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    while len(order):
        i, order = order[0], order[1:]
        keep.append(int(i))
        order = order[box_iou(boxes[i : i + 1], boxes[order])[0] <= thr]
    return keep


@pytest.mark.parametrize("n", [2, 7, 60, 300, NMS_MATRIX_MAX + 30])
def test_nms_matches_the_greedy_definition_on_random_boxes(n):
    """Both of nms's ways (the overlap matrix, and the loop past NMS_MATRIX_MAX boxes)
    keep what the greedy definition keeps, in its order, ties in score included."""
    rng = np.random.default_rng(n)
    for _ in range(3 if n < 100 else 1):
        centre, size = rng.uniform(0, 1, (n, 2)), rng.uniform(0.02, 0.4, (n, 2))
        boxes = np.concatenate([centre - size / 2, centre + size / 2], 1)
        scores = rng.choice(np.linspace(0, 1, 11), n)
        for thr in (0.3, 0.5):
            assert list(nms(boxes, scores, thr)) == _reference_nms(boxes, scores, thr)


def _reference_matches(detections, truths, c, thr=0.5):
    """The devkit's walk down the ranks, one detection at a time."""
    gts = [np.asarray(t.boxes, float)[np.asarray(t.class_ids) == c] for t in truths]
    diff = [
        np.zeros(len(g), bool) if t.difficult is None else np.asarray(t.difficult)[t.class_ids == c]
        for g, t in zip(gts, truths, strict=True)
    ]
    used = [np.zeros(len(g), bool) for g in gts]
    dets = [
        (s, i, b)
        for i, d in enumerate(detections)
        for s, b, k in zip(d.scores, d.boxes, d.class_ids, strict=True)
        if k == c
    ]
    order = np.argsort([-s for s, _, _ in dets], kind="stable")
    tp, fp = np.zeros(len(dets)), np.zeros(len(dets))
    for rank, j in enumerate(order):
        _, i, b = dets[j]
        if not len(gts[i]):
            fp[rank] = 1
            continue
        ious = box_iou(np.asarray(b)[None], gts[i])[0]
        best = int(np.argmax(ious))
        if ious[best] < thr:
            fp[rank] = 1
        elif not diff[i][best]:
            tp[rank], fp[rank], used[i][best] = (0, 1, True) if used[i][best] else (1, 0, True)
    return tp, fp


def test_matching_is_the_devkits_walk_on_random_sets():
    """match_class's array form gives the devkit's true and false positives: duplicates,
    difficult objects, images without objects, ties in score and in IoU."""
    from model.metrics import match_class

    rng = np.random.default_rng(3)
    for _ in range(60):
        truths, detections = [], []
        for _ in range(int(rng.integers(1, 7))):
            m = int(rng.integers(0, 6))
            g = np.round(rng.uniform(0, 1, (m, 4)) * 10) / 10
            g = np.concatenate([g[:, :2], g[:, :2] + 0.1 + g[:, 2:] / 3], 1)
            diff = rng.random(m) < 0.2 if rng.random() < 0.5 else None
            truths.append(ImageTruth(g, rng.integers(0, 3, m), diff))
            k = int(rng.integers(0, 12))
            near = (
                g[rng.integers(0, m, k)] + rng.normal(0, 0.03, (k, 4))
                if m
                else rng.uniform(0, 1, (k, 4))
            )
            detections.append(
                ImageDetections(near, np.round(rng.random(k), 1), rng.integers(0, 3, k))
            )
        for c in range(3):
            got = match_class(detections, truths, c)
            tp, fp = _reference_matches(detections, truths, c)
            assert np.array_equal(got.tp, tp) and np.array_equal(got.fp, fp)


def test_decode_predictions_places_box_and_scores():
    S, B, C = 7, 2, 3
    pred = np.zeros((S, S, 5 * B + C), dtype=np.float32)
    # predictor 1 of cell (row 2, col 4): centre ((4 + 0.5)/7, (2 + 0.25)/7), size 0.3^2 x 0.4^2
    pred[2, 4, 5:10] = [0.5, 0.25, 0.3, 0.4, 0.8]
    pred[2, 4, 10:] = [0.1, 0.9, 0.0]
    out = decode_predictions(pred, S=S, B=B, C=C, conf_threshold=0.2)
    assert out["class_ids"].tolist() == [1]
    assert out["scores"][0] == pytest.approx(0.72)
    cx, cy, w, h = 4.5 / 7, 2.25 / 7, 0.09, 0.16
    assert np.allclose(out["boxes"][0], [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], atol=1e-6)
    assert len(decode_predictions(pred, S=S, B=B, C=C, conf_threshold=0.8)["scores"]) == 0
    assert len(decode_predictions(pred, S=S, B=B, C=C, classes=[0, 2])["scores"]) == 0


def test_ap_all_point_vs_11_point():
    """Two objects, three detections by score: TP, FP, TP.
    recall = [0.5, 0.5, 1.0], precision = [1, 0.5, 2/3].
    All-point: envelope is 1 on (0, 0.5], 2/3 on (0.5, 1] -> 0.5 + 1/3 = 0.8333.
    11-point: recall >= 0..0.5 (6 points) -> max precision 1; 0.6..1.0 (5 points)
    -> 2/3; AP = (6 + 5 * 2/3) / 11 = 0.8485."""
    rec = np.array([0.5, 0.5, 1.0])
    prec = np.array([1.0, 0.5, 2 / 3])
    assert average_precision(rec, prec) == pytest.approx(0.5 + 1 / 3)
    assert average_precision(rec, prec, method="11point") == pytest.approx((6 + 5 * 2 / 3) / 11)


def test_evaluate_map_hand_case_with_difficult_and_duplicates():
    truths = [
        ImageTruth(
            np.array([[0, 0, 10, 10], [20, 20, 30, 30]]), np.array([0, 0]), np.array([False, True])
        ),
        ImageTruth(np.array([[0, 0, 10, 10]]), np.array([1])),
    ]
    dets = [
        # class 0: exact hit (TP), a duplicate of it (FP), a hit on the difficult object (ignored)
        ImageDetections(
            np.array([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]]),
            np.array([0.9, 0.8, 0.95]),
            np.array([0, 0, 0]),
        ),
        # class 1: a box with IoU 0.25 (a miss) scored above the real hit
        ImageDetections(
            np.array([[0, 0, 5, 5], [0, 0, 10, 10]]), np.array([0.9, 0.5]), np.array([1, 1])
        ),
    ]
    r = evaluate_map(dets, truths, num_classes=3)
    # class 0: npos = 1; TP at rank 1 -> AP 1. class 1: FP then TP -> recall 1 at precision 0.5.
    assert r.ap[0] == pytest.approx(1.0)
    assert r.ap[1] == pytest.approx(0.5)
    assert 2 not in r.ap  # no ground truth: left out of the mean
    assert r.map == pytest.approx(0.75)
    assert r.n_truth == {0: 1, 1: 1, 2: 0}


def test_iou_exactly_half_is_a_match_as_in_the_devkit():
    # IoU of [0,0,10,10] and [0,0,10,5] is 0.5: VOCevaldet.m matches at ov >= 0.5.
    truths = [ImageTruth(np.array([[0, 0, 10, 10]]), np.array([0]))]
    dets = [ImageDetections(np.array([[0, 0, 10, 5]]), np.array([0.9]), np.array([0]))]
    assert evaluate_map(dets, truths, 1).map == 1.0
    dets = [ImageDetections(np.array([[0, 0, 10, 4.9]]), np.array([0.9]), np.array([0]))]
    assert evaluate_map(dets, truths, 1).map == 0.0


def test_evaluation_keeps_every_class_above_the_threshold():
    """darknet's validate_yolo: a box whose class is uncertain is a detection of each
    class that reaches the threshold, so the second-best class can still be found."""
    S, B, C = 1, 1, 2
    pred = np.array([[[0.5, 0.5, 0.5, 0.5, 1.0, 0.6, 0.4]]], dtype=np.float32)  # (1, 1, 7)
    truth = np.array([[1, 0.5, 0.5, 0.25, 0.25]])  # class 1, the box's second class
    top = decode_predictions(pred, S=S, B=B, C=C, conf_threshold=0.001)
    every = decode_predictions(pred, S=S, B=B, C=C, conf_threshold=0.001, every_class=True)
    assert top["class_ids"].tolist() == [0]
    assert sorted(every["class_ids"].tolist()) == [0, 1]
    assert evaluate_grids(pred[None], [truth], S=S, B=B, C=C).map == 1.0


def test_a_nan_prediction_does_not_switch_nms_off():
    S, B, C = 2, 1, 1
    pred = np.zeros((S, S, 6), dtype=np.float32)
    pred[0, 0] = [0.5, 0.5, 0.6, 0.6, 0.9, 1.0]  # a box of 0.36 around (0.25, 0.25)
    pred[0, 1] = [-0.4, 0.5, 0.6, 0.6, 0.8, 1.0]  # nearly the same box, from the next cell
    pred[1, 1] = [np.nan, 0.5, 0.5, 0.5, 0.9, 1.0]
    out = decode_predictions(pred, S=S, B=B, C=C, conf_threshold=0.1, iou_threshold=0.5)
    assert np.isfinite(out["boxes"]).all()
    assert out["scores"].tolist() == pytest.approx([0.9])  # the duplicate was suppressed


def test_numpy_modules_do_not_import_torch():
    code = (
        "import sys, model.boxes, model.metrics, model.loss_numpy, model.layout, model.targets\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_score_at_precision_is_the_lowest_threshold_that_reaches_it():
    """Two objects; detections by score: hit, miss, hit, miss, miss. Precision of what a
    threshold keeps: 1, 1/2, 2/3, 2/4, 2/5."""
    truth = [ImageTruth(np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float), np.array([0, 0]))]
    far = [50, 50, 60, 60]
    boxes = np.array([[0, 0, 10, 10], far, [20, 20, 30, 30], far, far], float)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    dets = [ImageDetections(boxes, scores, np.zeros(5, int))]
    p = score_at_precision(dets, truth, 1, 0.6)
    assert (p.threshold, p.recall, p.detections) == (0.7, 1.0, 3)
    assert p.precision == pytest.approx(2 / 3)
    p = score_at_precision(dets, truth, 1, 0.9)
    assert (p.threshold, p.precision, p.recall) == (0.9, 1.0, 0.5)
    assert score_at_precision(dets, truth, 1, 1.01) is None
    # A miss tied at 0.7 is kept with the hit: 0.7 keeps 2 of 4, so 0.6 needs 0.9.
    tied = ImageDetections(np.r_[boxes, [far]], np.r_[scores, 0.7], np.zeros(6, int))
    assert score_at_precision([tied], truth, 1, 0.6).threshold == 0.9
    # Another class's detections pool with these.
    other = ImageDetections(np.array([far], float), np.array([0.95]), np.array([1]))
    both = [ImageDetections(np.r_[boxes, other.boxes], np.r_[scores, 0.95], np.r_[[0] * 5, 1])]
    assert score_at_precision(both, truth, 2, 0.6) is None  # 0.95 miss, then 1/2, 1/3, 2/4
    assert score_at_precision(both, truth, 2, 0.5).threshold == 0.7
