"""The YOLOv1 loss against a brute-force reference, hand-computed cases and gradcheck."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model.layout import cells_to_darknet, darknet_to_cells
from model.loss import yolo_loss
from model.loss_core import TERMS
from model.loss_numpy import yolo_loss_numpy
from support.reference_loss import reference_loss

GRIDS = [(7, 2, 20), (3, 1, 2), (4, 3, 5), (2, 2, 1)]


@st.composite
def batches(draw):
    S, B, C = draw(st.sampled_from(GRIDS))
    N = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    pred = rng.normal(0.3, 0.6, size=(N, S, S, 5 * B + C))
    special = draw(st.sampled_from(["random", "zero_iou", "zero_sqrt", "negative_sqrt"]))
    if special == "zero_iou":  # tiny predicted boxes far from every truth
        boxes = pred[..., : 5 * B].reshape(N, S, S, B, 5)
        boxes[..., 2:4] = 1e-3
        boxes[..., 0:2] = 0.0
    elif special == "zero_sqrt":
        pred[..., 2 : 5 * B : 5] = 0.0
    elif special == "negative_sqrt":
        pred[..., 2 : 5 * B : 5] = -np.abs(pred[..., 2 : 5 * B : 5])
    labels = []
    for _ in range(N):
        k = draw(st.integers(0, 5))
        rows = []
        for _ in range(k):
            edge = draw(st.sampled_from(["inside", "border", "same_cell"]))
            cx, cy = rng.uniform(0, 1, size=2)
            if edge == "border":
                cx, cy = rng.choice([0.0, 1.0]), rng.choice([0.0, 1.0, cy])
            elif edge == "same_cell" and rows:
                cx = min(1.0, rows[0][1] + 1e-3)
                cy = rows[0][2]
            w, h = rng.uniform(0.01, 1.0, size=2)
            rows.append([int(rng.integers(0, C)), cx, cy, w, h])
        labels.append(np.array(rows, dtype=np.float64).reshape(-1, 5))
    target = draw(st.sampled_from(["iou", "one"]))
    return S, B, C, pred, labels, target


def _close(a, b, rel=1e-5, abs_=1e-6):
    return math.isclose(float(a), float(b), rel_tol=rel, abs_tol=abs_)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_vectorised_losses_equal_brute_force(batch):
    S, B, C, pred, labels, target = batch
    ref = reference_loss(pred.tolist(), [lab.tolist() for lab in labels], S, B, C, target=target)
    kw = dict(S=S, B=B, C=C, confidence_target=target, reduction="none")
    r_np = yolo_loss_numpy(pred, labels, **kw)
    r_t32 = yolo_loss(
        torch.tensor(pred, dtype=torch.float32), [torch.tensor(lab) for lab in labels], **kw
    )
    r_t64 = yolo_loss(torch.tensor(pred), [torch.tensor(lab) for lab in labels], **kw)
    for n, ref_n in enumerate(ref):
        for name in TERMS:
            assert _close(r_np.per_image[name][n], ref_n[name]), (name, n)
            assert _close(r_t64.per_image[name][n], ref_n[name]), (name, n)
            assert _close(r_t32.per_image[name][n], ref_n[name], rel=1e-5, abs_=1e-4), (name, n)
        assert _close(r_np.per_image["total"][n], ref_n["total"])
        assert int(r_np.dropped[n]) == ref_n["dropped"] == int(r_t32.dropped[n])


def test_reductions_agree():
    rng = np.random.default_rng(0)
    pred = rng.normal(size=(4, 7, 7, 30))
    labels = [
        np.array([[3, 0.3, 0.4, 0.2, 0.5]]),
        np.zeros((0, 5)),
        np.array([[1, 0.9, 0.1, 0.1, 0.1], [2, 0.5, 0.5, 0.7, 0.7]]),
        np.zeros((0, 5)),
    ]
    none = yolo_loss_numpy(pred, labels, reduction="none")
    mean = yolo_loss_numpy(pred, labels, reduction="mean")
    total = yolo_loss_numpy(pred, labels, reduction="sum")
    assert np.isclose(mean.total, none.total.mean())
    assert np.isclose(total.total, none.total.sum())
    assert np.isclose(mean.total, sum(mean.terms[k] for k in TERMS))
    t = yolo_loss(torch.tensor(pred, dtype=torch.float32), [torch.tensor(x) for x in labels])
    assert np.isclose(float(t.total), mean.total, rtol=1e-5)
    assert list(none.objects) == [1, 0, 2, 0]


def _one_cell_pred(S, B, C, row, col, blocks, classes):
    pred = np.zeros((1, S, S, 5 * B + C))
    for j, block in enumerate(blocks):
        pred[0, row, col, 5 * j : 5 * j + 5] = block
    pred[0, row, col, 5 * B :] = classes
    return pred


def test_hand_case_perfect_box_only_noobj_of_other_predictor():
    """S=2, B=2, C=2. One object, class 1, centre (0.75, 0.25), size 0.5 x 0.5:
    it lives in row 0, col 1, with targets x = 0.75*2 - 1 = 0.5, y = 0.25*2 - 0 = 0.5,
    sqrt(w) = sqrt(h) = sqrt(0.5).
    Predictor 0 is exact (IoU 1, conf 1), predictor 1 is off with conf 0.4,
    classes (0, 1) are exact. Then coord_xy = coord_wh = class = 0,
    obj = (1 - IoU 1)^2 = 0, and noobj = 0.5 * 0.4^2 = 0.08 (predictor 1 of the
    object cell, not responsible, is pushed to 0 too)."""
    s = math.sqrt(0.5)
    pred = _one_cell_pred(2, 2, 2, 0, 1, [[0.5, 0.5, s, s, 1.0], [0.1, 0.1, 0.2, 0.2, 0.4]], [0, 1])
    labels = [np.array([[1, 0.75, 0.25, 0.5, 0.5]])]
    r = yolo_loss_numpy(pred, labels, S=2, B=2, C=2)
    assert r.terms["coord_xy"] == pytest.approx(0, abs=1e-12)
    assert r.terms["coord_wh"] == pytest.approx(0, abs=1e-12)
    assert r.terms["obj"] == pytest.approx(0, abs=1e-12)
    assert r.terms["class"] == pytest.approx(0, abs=1e-12)
    assert r.terms["noobj"] == pytest.approx(0.08)
    assert r.total == pytest.approx(0.08)


def test_hand_case_offsets_sqrt_and_iou_target():
    """S=1, B=1, C=1 (the whole image is one cell). Truth: class 0, centre
    (0.5, 0.5), size 0.64 x 0.36 (sqrt: 0.8, 0.6). Prediction x=0.6, y=0.5,
    sqrt_w=0.8, sqrt_h=0.5, conf=0.9, class 0.7.
    coord_xy = 5 * (0.1^2 + 0) = 0.05
    coord_wh = 5 * (0 + 0.1^2) = 0.05   (squared difference of square roots)
    Decoded box: centre (0.6, 0.5), size 0.64 x 0.25; x-overlap 0.64 - 0.1 = 0.54,
    y-overlap 0.25; inter = 0.135; union = 0.2304 + 0.16 - 0.135 = 0.2554;
    IoU = 0.135 / 0.2554.
    obj (iou target) = (0.9 - IoU)^2; obj (one) = (0.9 - 1)^2 = 0.01
    class = (0.7 - 1)^2 = 0.09; noobj = 0 (the only predictor is responsible)."""
    pred = np.array([0.6, 0.5, 0.8, 0.5, 0.9, 0.7]).reshape(1, 1, 1, 6)
    labels = [np.array([[0, 0.5, 0.5, 0.64, 0.36]])]
    iou = 0.135 / 0.2554
    r = yolo_loss_numpy(pred, labels, S=1, B=1, C=1)
    assert r.terms["coord_xy"] == pytest.approx(0.05)
    assert r.terms["coord_wh"] == pytest.approx(0.05)
    assert r.terms["obj"] == pytest.approx((0.9 - iou) ** 2)
    assert r.terms["class"] == pytest.approx(0.09)
    assert r.terms["noobj"] == 0
    r1 = yolo_loss_numpy(pred, labels, S=1, B=1, C=1, confidence_target="one")
    assert r1.terms["obj"] == pytest.approx(0.01)
    rt = yolo_loss(
        torch.tensor(pred, dtype=torch.float32), [torch.tensor(labels[0])], S=1, B=1, C=1
    )
    assert float(rt.total) == pytest.approx(0.05 + 0.05 + (0.9 - iou) ** 2 + 0.09, rel=1e-6)


def test_hand_case_all_zero_iou_picks_nearest_and_empty_cells():
    """S=2, B=2, C=1. Truth class 0 at (0.25, 0.25), 0.2 x 0.2: cell (0, 0),
    x = y = 0.5. Predictor 0 decodes to centre (0.5, 0.5) with size 0 (sqrt 0):
    IoU 0, RMSE sqrt(0.0625*2 + 0.04*2) = sqrt(0.205). Predictor 1 decodes to
    centre (0.05, 0.05), size 0 (sqrt 0): IoU 0, RMSE sqrt(0.04*2 + 0.04*2) = sqrt(0.16).
    Every IoU is 0, so the nearest, predictor 1, is responsible:
    coord_xy = 5 * (0.4^2 + 0.4^2) = 1.6 (x1 = 0.1 vs 0.5)
    coord_wh = 5 * (sqrt(0.2)^2 * 2) = 2.0
    obj = (conf1 0.3 - IoU 0)^2 = 0.09
    noobj = 0.5 * (0.6^2 [predictor 0 here] + 0.2^2 [an empty cell]) = 0.2
    class = (0.5 - 1)^2 = 0.25"""
    pred = np.zeros((1, 2, 2, 11))
    pred[0, 0, 0, :10] = [1.0, 1.0, 0.0, 0.0, 0.6, 0.1, 0.1, 0.0, 0.0, 0.3]
    pred[0, 0, 0, 10] = 0.5
    pred[0, 1, 1, 4] = 0.2
    labels = [np.array([[0, 0.25, 0.25, 0.2, 0.2]])]
    r = yolo_loss_numpy(pred, labels, S=2, B=2, C=1)
    assert r.terms["coord_xy"] == pytest.approx(1.6)
    assert r.terms["coord_wh"] == pytest.approx(2.0)
    assert r.terms["obj"] == pytest.approx(0.09)
    assert r.terms["noobj"] == pytest.approx(0.2)
    assert r.terms["class"] == pytest.approx(0.25)


def test_two_objects_in_one_cell_first_wins_and_is_counted():
    pred = np.zeros((1, 7, 7, 30))
    labels = [np.array([[3, 0.52, 0.52, 0.1, 0.1], [5, 0.53, 0.53, 0.3, 0.3]])]
    r = yolo_loss_numpy(pred, labels)
    assert list(r.dropped) == [1] and list(r.objects) == [1]
    assert r.terms["class"] == pytest.approx(1.0)  # one-hot of class 3 only


@pytest.mark.parametrize(
    "row, message",
    [
        ([20, 0.5, 0.5, 0.1, 0.1], "image 1, label 1: class_id 20"),
        ([-1, 0.5, 0.5, 0.1, 0.1], "image 1, label 1: class_id -1"),
        ([1.5, 0.5, 0.5, 0.1, 0.1], "image 1, label 1: class_id 1.5"),
        ([1, 1.2, 0.5, 0.1, 0.1], "image 1, label 1: centre"),
        ([1, 0.5, -0.1, 0.1, 0.1], "image 1, label 1: centre"),
        ([1, 0.5, 0.5, 0.0, 0.1], "image 1, label 1: width/height"),
        ([1, 0.5, 0.5, 0.1, 1.01], "image 1, label 1: width/height"),
        ([1, 0.5, float("nan"), 0.1, 0.1], "image 1, label 1: non-finite"),
        ([1, 0.5, 0.5, float("inf"), 0.1], "image 1, label 1: non-finite"),
    ],
)
def test_bad_labels_raise_with_index(row, message):
    labels = [np.zeros((0, 5)), np.array([[0, 0.5, 0.5, 0.2, 0.2], row])]
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        yolo_loss_numpy(np.zeros((2, 7, 7, 30)), labels)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        yolo_loss(torch.zeros(2, 7, 7, 30), [torch.tensor(x) for x in labels])


def test_bad_shapes_and_counts():
    with pytest.raises(ValueError, match=r"\(N, 7, 7, 30\)"):
        yolo_loss_numpy(np.zeros((1, 7, 7, 29)), [np.zeros((0, 5))])
    with pytest.raises(ValueError, match="2 label lists for 1 images"):
        yolo_loss_numpy(np.zeros((1, 7, 7, 30)), [np.zeros((0, 5))] * 2)
    with pytest.raises(ValueError, match=r"shape \(k, 5\)"):
        yolo_loss_numpy(np.zeros((1, 7, 7, 30)), [np.zeros((2, 4))])
    with pytest.raises(ValueError, match="NaN"):
        yolo_loss_numpy(np.full((1, 7, 7, 30), np.nan), [np.zeros((0, 5))])


def test_darknet_layout_round_trips_and_scores_the_same():
    S, B, C = 7, 2, 20
    rng = np.random.default_rng(1)
    cells = rng.normal(size=(3, S, S, 5 * B + C))
    flat = cells_to_darknet(cells, S=S, B=B, C=C)
    assert flat.shape == (3, S * S * (5 * B + C))
    assert np.array_equal(darknet_to_cells(flat, S=S, B=B, C=C), cells)
    tflat = cells_to_darknet(torch.tensor(cells), S=S, B=B, C=C)
    assert torch.equal(darknet_to_cells(tflat, S=S, B=B, C=C), torch.tensor(cells))
    # darknet's own indexing: class j of cell i at i*C + j; confidence of
    # predictor n at S*S*C + i*B + n; box values at S*S*(C+B) + (i*B + n)*4.
    i, n = 2 * S + 5, 1
    assert flat[0, i * C + 3] == cells[0, 2, 5, 5 * B + 3]
    assert flat[0, S * S * C + i * B + n] == cells[0, 2, 5, 5 * n + 4]
    assert flat[0, S * S * (C + B) + (i * B + n) * 4 + 2] == cells[0, 2, 5, 5 * n + 2]
    labels = [np.array([[4, 0.3, 0.6, 0.2, 0.4]])] * 3
    a = yolo_loss_numpy(cells, labels)
    b = yolo_loss_numpy(darknet_to_cells(flat, S=S, B=B, C=C), labels)
    assert a.total == pytest.approx(b.total)


def test_gradcheck_float64():
    rng = np.random.default_rng(3)
    S, B, C = 3, 2, 3
    pred = torch.tensor(rng.normal(0.4, 0.3, size=(2, S, S, 5 * B + C)), requires_grad=True)
    labels = [torch.tensor([[0, 0.2, 0.3, 0.3, 0.4], [2, 0.7, 0.8, 0.5, 0.2]]), torch.zeros(0, 5)]
    assert torch.autograd.gradcheck(
        lambda p: yolo_loss(p, labels, S=S, B=B, C=C, confidence_target="one").total, (pred,)
    )
    # With the IoU target the target is a stop-gradient of the box values, which
    # finite differences cannot see; check the gradient w.r.t. confidences and
    # classes with the box values held fixed.
    is_box = torch.zeros(5 * B + C, dtype=torch.bool)
    for j in range(B):
        is_box[5 * j : 5 * j + 4] = True
    fixed = pred.detach().clone()

    def with_free_conf_and_classes(free):
        p = fixed.clone()
        p[..., ~is_box] = free
        return yolo_loss(p, labels, S=S, B=B, C=C, confidence_target="iou").total

    free = fixed[..., ~is_box].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(with_free_conf_and_classes, (free,))


def test_gradients_finite_at_degenerate_points():
    pred = torch.zeros(3, 7, 7, 30, requires_grad=True)  # sqrt_w = 0, all IoUs 0
    labels = [
        torch.tensor([[1, 0.5, 0.5, 0.3, 0.3]]),
        torch.zeros(0, 5),
        torch.tensor([[2, 1.0, 1.0, 1.0, 1.0]]),
    ]
    r = yolo_loss(pred, labels)
    r.total.backward()
    assert torch.isfinite(pred.grad).all()
    assert torch.isfinite(r.total)


def test_float32_inside_autocast():
    pred = torch.randn(2, 7, 7, 30, dtype=torch.bfloat16, requires_grad=True)
    labels = [torch.tensor([[1, 0.5, 0.5, 0.3, 0.3]]), torch.zeros(0, 5)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        r = yolo_loss(pred, labels)
    assert r.total.dtype == torch.float32
    r.total.backward()
    assert torch.isfinite(pred.grad.float()).all()
    ref = yolo_loss_numpy(pred.detach().float().numpy(), [x.numpy() for x in labels])
    assert float(r.total.detach()) == pytest.approx(ref.total, rel=1e-5)


def test_float32_and_float64_pick_the_same_predictor_for_small_boxes():
    """Small boxes (down to the readers' 0.005 of the image) and a predictor that
    overlaps the truth by a sliver of 2e-8 to 2e-7: in float32 that overlap cancels
    to 0 and darknet's rule falls back to the nearest box, so the pick (and the loss)
    would differ between the float32 torch loss and the float64 NumPy loss."""
    rng = np.random.default_rng(11)
    S, B, C = 7, 2, 3
    worst = 0.0
    for _ in range(2000):
        tw, th = rng.uniform(0.005, 0.05, size=2)
        row, col = rng.integers(0, S, size=2)
        tcx, tcy = (col + rng.uniform(0.2, 0.8)) / S, (row + rng.uniform(0.2, 0.8)) / S
        lab = np.array([[rng.integers(0, C), tcx, tcy, tw, th]])
        pred = rng.normal(0.0, 0.05, size=(1, S, S, 5 * B + C))
        pw, ph = rng.uniform(0.005, 0.05, size=2)
        sliver = rng.uniform(2e-8, 2e-7)
        pcx = tcx + (tw + pw) / 2 - sliver  # predictor 0 touches the truth's right edge
        pred[0, row, col, 0:4] = [pcx * S - col, tcy * S - row, np.sqrt(pw), np.sqrt(ph)]
        # predictor 1 overlaps nothing but is the nearer one by RMSE half of the time
        d = rng.uniform(0.5, 1.5) * (tw + pw) / 2 + max(tw, th)
        pred[0, row, col, 5:9] = [(tcx - d) * S - col, tcy * S - row, np.sqrt(tw), np.sqrt(th)]
        p32 = pred.astype(np.float32)
        a = float(yolo_loss(torch.tensor(p32), [torch.tensor(lab)], S=S, B=B, C=C).total)
        b = yolo_loss_numpy(p32.astype(np.float64), [lab], S=S, B=B, C=C).total
        worst = max(worst, abs(a - b) / max(abs(b), 1e-12))
    assert worst < 1e-5, worst
